"""create_optimizer on FSDP1 (flat 1-D shards) and FSDP2 (DTensor) wraps, 2 real gloo ranks."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
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


def _layouts(out: Path, rank: int) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    fsdp1 = FullyShardedDataParallel(
        tiny_model(), use_orig_params=True, device_id=torch.device("cpu")
    )
    flat = [p.ndim for n, p in fsdp1.named_parameters() if "lora_A" in n]
    model = tiny_model()
    fully_shard(model)
    result = {"ndims": sorted(set(flat)), "fsdp1": build(fsdp1), "fsdp2": build(model)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def _rank(rank: int, port: int, out: Path) -> None:
    """One gloo rank: the group layouts, then auto and the probe under FSDP2 and DDP."""
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        _layouts(out, rank)
        _steer(out, rank)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where both ranks wrote their results (one spawn for every test here)."""
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_rank, args=(free_port(), out), nprocs=2)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fsdp1_and_fsdp2_groups_match_the_unwrapped_model(ranks: Path) -> None:
    expected = build(tiny_model())
    assert {row[0] for row in expected} == {"lora_A", "lora_B", "vector", "head"}
    assert {row[1] for row in expected if row[0] == "lora_A"} == {32, 64}
    expected = json.loads(json.dumps(expected))  # tuples as JSON lists, like the ranks' files
    for rank in range(2):
        result = json.loads((ranks / f"rank{rank}.json").read_text())
        assert result["ndims"] == [1], f"rank {rank}: FSDP1 did not flatten; this checks nothing"
        assert result["fsdp1"] == expected, f"rank {rank}: FSDP1"
        assert result["fsdp2"] == expected, f"rank {rank}: FSDP2"


IDS = torch.randint(0, 128, (4, 8), generator=torch.Generator().manual_seed(3))  # global batch


def steered(model: torch.nn.Module, rows: slice, signal: str) -> dict[str, Any]:
    """3 steps of ratio="auto" (every step) and the probe on `rows` of IDS: what they measured."""
    from loraplus.autoratio import AutoRatioConfig, controller
    from loraplus.probe import FeatureUpdateProbe

    cfg = AutoRatioConfig(every=1, signal=signal, max_step=8.0)  # unclamped: each layer its own
    opt = create_optimizer(model, "adamw", lr=1e-2, ratio="auto", auto_ratio=cfg)
    probe = FeatureUpdateProbe(model)
    probe.watch(opt)
    deltas = []
    for _ in range(3):
        model(input_ids=IDS[rows], labels=IDS[rows]).loss.backward()
        opt.step()
        opt.zero_grad()
        deltas.append([[u.delta_a, u.delta_b] for u in probe.last or []])
    auto = controller(opt)
    assert auto is not None
    return {"state": auto.auto_state(), "deltas": deltas}


def lora_llama_b() -> torch.nn.Module:
    """The tiny LoRA Llama with B ≠ 0, so that the first step has a balance."""
    from tiny import lora_llama

    model = lora_llama(target_modules=["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return model


def _steer(out: Path, rank: int) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.nn.parallel import DistributedDataParallel

    rows = slice(2 * rank, 2 * rank + 2)
    model = lora_llama_b()
    fully_shard(model)
    result: dict[str, Any] = {"fsdp2": steered(model, rows, "inputs")}
    result["ddp"] = steered(DistributedDataParallel(lora_llama_b()), rows, "inputs")
    fsdp1 = FullyShardedDataParallel(
        lora_llama_b(), use_orig_params=True, device_id=torch.device("cpu")
    )
    try:
        create_optimizer(fsdp1, "adamw", lr=1e-3, ratio="auto")
    except ValueError as err:
        result["fsdp1"] = str(err)
    (out / f"steer{rank}.json").write_text(json.dumps(result))


def test_auto_and_probe_under_fsdp2_and_ddp_match_one_process(ranks: Path) -> None:
    """Each rank holds half the batch (and, under FSDP2, half of each matrix): the δ's (inputs
    summed over ranks) and the ratios equal one process's on the whole batch, on every rank."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = steered(lora_llama_b(), slice(0, 4), "inputs")
    finally:
        torch.set_num_threads(threads)
    per_rank = [json.loads((ranks / f"steer{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1]  # every rank measured and chose the same
    assert all(len(step) == 6 for step in ref["deltas"])  # 3 modules x 2 layers, every step
    for kind in ("fsdp2", "ddp"):
        got = per_rank[0][kind]
        for key in ("last_balance", "balance_ema", "log2_ratio"):
            assert got["state"][key] == pytest.approx(ref["state"][key], rel=1e-4), (kind, key)
        assert len(set(got["state"]["log2_ratio"])) > 1  # the layers went their own ways
        for step, want in zip(got["deltas"], ref["deltas"], strict=True):
            assert step == [pytest.approx(w, rel=1e-4) for w in want], kind
    assert "FSDP1" in per_rank[0]["fsdp1"] and "fully_shard" in per_rank[0]["fsdp1"]
