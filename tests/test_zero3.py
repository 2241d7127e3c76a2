"""Real DeepSpeed on CPU (DS_ACCELERATOR=cpu, gloo, one process): ZeRO-3's partitioned tensors
are classified and counted at full size, and the PEFT-compatible builder's groups survive
DeepSpeed under torch's LambdaLR. DeepSpeed runs in a subprocess (this file as a script) so its
process group and module hooks never touch the test session."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
RATIO, LR = 16.0, 1e-3


def _config(stage: int) -> dict[str, Any]:
    return {
        "train_batch_size": 2,
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }


def _zero3_counts() -> dict[str, Any]:
    """LoRA that is not PEFT's, built under zero.Init: every tensor is a (0,) partition."""
    import deepspeed
    import torch
    from torch import nn

    from loraplus import classify, create_optimizer, summary
    from loraplus.optim import group_sizes
    from loraplus.roles import lora_fan_ins
    from loraplus.train.run import _param_groups

    class LoRALinear(nn.Module):
        def __init__(self, n_in: int, n_out: int, r: int) -> None:
            super().__init__()
            self.base = nn.Linear(n_in, n_out)
            self.base.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.randn(r, n_in) / n_in**0.5)
            self.lora_B = nn.Parameter(torch.randn(n_out, r) * 0.1)
            self.gain = nn.Parameter(torch.ones(n_out))  # a vector

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.base(x) + x @ self.lora_A.T @ self.lora_B.T) * self.gain

    torch.manual_seed(0)
    config = _config(3)
    with deepspeed.zero.Init(config_dict_or_path=config):
        net = nn.Sequential(LoRALinear(16, 32, 4), nn.ReLU(), LoRALinear(32, 8, 4))
    shapes = sorted({tuple(p.shape) for p in net.parameters()})
    roles = {n: str(r) for n, r in classify(net).items()}
    widths = lora_fan_ins(net, classify(net))
    opt = create_optimizer(net, "adamw", lr=LR, ratio=RATIO, width_aware=True)
    before = group_sizes(opt)
    engine, *_ = deepspeed.initialize(model=net, optimizer=opt, config=config)
    x = torch.randn(2, 16)
    engine.backward(engine(x).pow(2).mean())
    engine.step()
    return {
        "shapes": shapes,
        "roles": roles,
        "widths": widths,
        "before": before,
        "after_without_model": group_sizes(opt),
        "after": group_sizes(opt, net),
        "metrics": _param_groups(opt, net),
        "summary": summary(opt, net),
    }


def _compat_under_deepspeed(checkpoint: Path) -> dict[str, Any]:
    """create_loraplus_optimizer + LambdaLR handed to DeepSpeed ZeRO-2, two steps, checkpoint."""
    import deepspeed
    import torch
    from tiny import lora_bert

    from loraplus import create_loraplus_optimizer
    from loraplus.optim import group_sizes

    model = lora_bert()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    before = group_sizes(opt)
    engine, _, _, ds_sched = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=_config(2)
    )
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    lrs = []
    for _ in range(2):
        engine.backward(engine(input_ids=ids, labels=torch.tensor([0, 1])).loss)
        engine.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    engine.save_checkpoint(str(checkpoint))
    engine.load_checkpoint(str(checkpoint))
    return {
        "roles": [g["role"] for g in opt.param_groups],
        "lrs": lrs,
        "before": before,
        "after": group_sizes(opt, model),
        "scheduler_step": ds_sched.last_epoch,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("zero")
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(json.loads((out / "results.json").read_text()))


def test_zero3_partitions_are_classified_and_counted_at_full_size(results: dict[str, Any]) -> None:
    got = results["zero3"]
    assert got["shapes"] == [[0]]  # every tensor partitioned before the optimizer was built
    assert got["roles"] == {
        "0.lora_A": "lora_A",
        "0.lora_B": "lora_B",
        "0.gain": "vector",
        "2.lora_A": "lora_A",
        "2.lora_B": "lora_B",
        "2.gain": "vector",
    }
    assert got["widths"] == {"0.lora_A": 16, "2.lora_A": 32}
    # width-aware lora_A groups by fan-in (4x16, 4x32), both B's (32x4 + 8x4), both gains.
    expected = [[1, 64], [1, 128], [2, 160], [2, 40]]
    assert got["before"] == expected
    assert got["after_without_model"] == [[0, 0]] * 4  # ZeRO-3 empties the groups between steps
    assert got["after"] == expected
    assert [[g["tensors"], g["parameters"]] for g in got["metrics"]] == expected
    assert [g["role"] for g in got["metrics"]] == ["lora_A", "lora_A", "lora_B", "vector"]
    assert [g["lr"] for g in got["metrics"]] == pytest.approx(
        [LR * 24 / 16, LR * 24 / 32, LR * RATIO, LR * RATIO]
    )
    lines = got["summary"].splitlines()
    assert lines[2].split()[:4] == ["lora_A", "16", "1", "64"]
    assert lines[4].split()[:4] == ["lora_B", "-", "2", "160"]


def test_peft_compatible_groups_survive_deepspeed_and_lambdalr(results: dict[str, Any]) -> None:
    got = results["compat"]
    assert got["roles"] == ["lora_A", "lora_B"]
    assert got["lrs"] == [[LR * 0.5**k, LR * RATIO * 0.5**k] for k in (1, 2)]
    assert got["scheduler_step"] == 2
    assert got["after"] == got["before"]  # counted on the model though ZeRO-2 holds flat shards


def main(out: Path) -> None:
    results = {"zero3": _zero3_counts(), "compat": _compat_under_deepspeed(out / "ckpt")}
    (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
