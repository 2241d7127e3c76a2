"""create_optimizer on FSDP1 (flat 1-D shards) and FSDP2 (DTensor) wraps, 2 real gloo ranks."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import lora_bert

from loraplus import create_optimizer


def layout(optimizer: torch.optim.Optimizer) -> list[tuple[Any, ...]]:
    """What must not depend on the wrapper: each group's role, fan-in, names, lr, decay."""
    return [
        (g["role"], g.get("fan_in"), g["param_names"], g["lr"], g["weight_decay"])
        for g in optimizer.param_groups
    ]


def build(model: torch.nn.Module) -> list[tuple[Any, ...]]:
    return layout(create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01, width_aware=True))


def tiny_model() -> torch.nn.Module:
    """LoRA on attention and MLP (two widths) with lora_bias vectors and a saved head."""
    return lora_bert(
        target_modules=["query", "value", "intermediate.dense", "output.dense"],
        lora_bias=True,
        modules_to_save=["classifier"],
    )


def _rank(rank: int, port: int, out: Path) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        fsdp1 = FullyShardedDataParallel(
            tiny_model(), use_orig_params=True, device_id=torch.device("cpu")
        )
        flat = [p.ndim for n, p in fsdp1.named_parameters() if "lora_A" in n]
        model = tiny_model()
        fully_shard(model)
        result = {"ndims": sorted(set(flat)), "fsdp1": build(fsdp1), "fsdp2": build(model)}
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fsdp1_and_fsdp2_groups_match_the_unwrapped_model(tmp_path: Path) -> None:
    expected = build(tiny_model())
    assert {row[0] for row in expected} == {"lora_A", "lora_B", "vector", "head"}
    assert {row[1] for row in expected if row[0] == "lora_A"} == {32, 64}
    mp.spawn(_rank, args=(free_port(), tmp_path), nprocs=2)
    expected = json.loads(json.dumps(expected))  # tuples as JSON lists, like the ranks' files
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["ndims"] == [1], f"rank {rank}: FSDP1 did not flatten; this checks nothing"
        assert result["fsdp1"] == expected, f"rank {rank}: FSDP1"
        assert result["fsdp2"] == expected, f"rank {rank}: FSDP2"
