"""Runs that must not pass as fine: divergence (exit 3), collapse, pickle weights; honest output.

Each runs `loraplus train` on the tiny saved BERT and checks the exit status, the one-line
message, metrics.json and the files left in the output folder.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_train import tiny_cls_config, tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.train import train
from loraplus.train.guard import collapse_warning, loss_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(files["bert"]),
        "--data",
        str(files["cls"]),
        "--max-steps",
        "6",
        "--eval-steps",
        "3",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--rank",
        "4",
        "--report-to",
        "none",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def test_nonfinite_loss_exits_3_saves_nothing_nonfinite(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    args = _args(tiny_files, out, "--lr", "1e30", "--save-steps", "1", "--eval-steps", "1")
    args += ["--scheduler", "constant"]
    assert cli.main(args) == 3
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: diverged at step ")
    assert "lr lora_A 1e+30, lora_B 1.6e+31" in errors[0] and "lower --lr or --ratio" in errors[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["diverged_reason"] in errors[0]
    assert metrics["final"]["eval_accuracy"] is None  # never the step-0 evaluation
    assert "final eval_accuracy None" in captured.out
    assert not (out / "adapter").exists()
    step = metrics["diverged_at_step"]
    kept = sorted(out.glob("checkpoint-*"))
    assert all(int(p.name.split("-")[1]) < step for p in kept)
    for folder in kept:  # the good checkpoints stay, and hold only finite numbers
        for tensor in load_file(folder / "adapter_model.safetensors").values():
            assert bool(torch.isfinite(tensor).all())


def test_loss_above_the_bound_exits_3(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    args = _args(tiny_files, out, "--lr", "10", "--eval-steps", "1", "--max-steps", "12")
    assert cli.main(args) == 3
    err = capsys.readouterr().err
    assert "is above 10 x the first logged loss" in err
    metrics = json.loads((out / "metrics.json").read_text())
    first = metrics["train_loss_log"][0]["loss"]  # step 1's: the untrained model's loss
    assert metrics["train_loss_log"][0]["step"] == 1
    step = metrics["diverged_at_step"]
    reason = metrics["diverged_reason"]
    assert re.match(
        rf"diverged at step {step}: the (training|eval) loss [0-9.e+]+ is above", reason
    )
    assert float(reason.split(" loss ")[1].split()[0]) > 10 * first
    assert f"first logged loss {first:.4g}" in reason
    assert not (out / "adapter").exists() and metrics["final"]["steps"] == step < 12
    # the same run with the bound turned off goes on to the end: the loss stays finite
    off_args = _args(tiny_files, tmp_path / "off", "--lr", "10", "--eval-steps", "1")
    assert cli.main([*off_args, "--max-steps", "12", "--divergence-factor", "inf"]) == 0
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert off["final"]["steps"] == 12 and off["diverged"] is False
    assert max(e["loss"] for e in off["train_loss_log"]) > 10 * first


def test_loss_problem_rules() -> None:
    assert loss_problem(0.7, 1.0, 0.69, 10) is None
    assert loss_problem(float("nan"), 1.0, 0.69, 10) == "the training loss is nan"
    assert loss_problem(0.7, float("inf"), 0.69, 10) == "the gradient norm is inf"
    assert loss_problem(7.0, 1.0, 0.69, 10) == (
        "the training loss 7 is above 10 x the first logged loss 0.69"
    )
    assert loss_problem(1e9, 1.0, 0.69, math.inf) is None


def test_collapse_is_warned_in_output_and_metrics(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    # lr so small that nothing moves: every eval example gets the same class
    assert cli.main(_args(tiny_files, out, "--lr", "1e-9")) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert lines == [
        line for line in lines if line.split(":")[0] in ("step 0/6", "step 3/6", "step 6/6")
    ]
    assert len(lines) == 3 and "eval_accuracy" in lines[0]  # --no-progress: one line per eval
    assert "warning: the model collapsed: it predicts one class" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][-1]["eval_predicted_classes"] == 1.0
    assert metrics["warnings"] == [text.split("warning: ")[1].splitlines()[0]]
    assert collapse_warning({"eval_predicted_classes": 2, "eval_loss": 0.5}, 2, 2) is None
    near = collapse_warning({"eval_predicted_classes": 2, "eval_loss": math.log(4)}, 4, 4)
    assert near is not None and "within 1% of ln 4" in near


def _pickle_only(src: Path, dest: Path, payload: Any = None) -> Path:
    """A copy of a saved model folder with its weights as pytorch_model.bin only."""
    shutil.copytree(src, dest)
    tensors = load_file(dest / "model.safetensors")
    (dest / "model.safetensors").unlink()
    if payload is None:
        torch.save(tensors, dest / "pytorch_model.bin")
    else:
        with (dest / "pytorch_model.bin").open("wb") as handle:
            pickle.dump(payload, handle)
    return dest


class Payload:
    """A pickle that runs a command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_weights_are_refused_unless_allowed(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _pickle_only(tiny_files["bert"], tmp_path / "pickled")
    files = {**tiny_files, "bert": folder}
    assert cli.main(_args(files, tmp_path / "no", "--max-steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: Model folder {folder} has weights only as pickle (pytorch_model.bin), which can "
        "run code when loaded: convert them to safetensors, or pass --allow-pickle if you trust "
        "the files (they are then loaded with torch's weights_only loader)."
    )
    assert not (tmp_path / "no").exists()
    cfg = tiny_cls_config(files, tmp_path / "yes", allow_pickle=True, max_steps=1, eval_steps=1)
    assert train(cfg).final["steps"] == 1

    marker = tmp_path / "pwned"
    evil = _pickle_only(tiny_files["bert"], tmp_path / "evil", {"w": Payload(marker)})
    args = _args({**tiny_files, "bert": evil}, tmp_path / "e", "--allow-pickle")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: Refused to load the pickle weights of ")
    assert "weights_only loader stopped them (Weights only load failed" in err
    assert not marker.exists()  # the payload never ran


def test_curves_title_names_every_groups_lr(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    from loraplus.train.outputs import curves_title

    plain = tiny_cls_config(tiny_files, tmp_path)
    mult = tiny_cls_config(tiny_files, tmp_path, lr_multipliers="head=16")
    lrs = {"lora_A": 1e-3, "lora_B": 0.016, "vector": 0.016, "head": 1e-3}
    assert curves_title(plain, lrs) == (
        f"{plain.model} on {plain.data} (ratio 16): "
        "lr lora_A 0.001, lora_B 0.016, vector 0.016, head 0.001"
    )
    assert curves_title(mult, {**lrs, "head": 0.016}) != curves_title(plain, lrs)


def test_curves_title_of_a_run_resumed_with_another_ratio_says_what_trained_before(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    from loraplus._io import write_json
    from loraplus.train.checkpoint import MARKER
    from loraplus.train.outputs import curves_title, resumed_settings

    now = tiny_cls_config(tiny_files, tmp_path, ratio=4)
    checkpoint = tmp_path / "checkpoint-8"
    write_json(checkpoint / MARKER, {"config": {**now.to_dict(), "ratio": 16.0}, "files": {}})
    lrs = {"lora_A": 1e-3, "lora_B": 0.004}
    title = curves_title(now, lrs, resumed_settings(checkpoint))
    assert title == (
        f"{now.model} on {now.data} (ratio 4): lr lora_A 0.001, lora_B 0.004\n"
        "steps 1-8 trained at ratio 16 (resumed from 8)"
    )
    write_json(checkpoint / MARKER, {"config": now.to_dict(), "files": {}})  # unchanged: one line
    assert curves_title(now, lrs, resumed_settings(checkpoint)) == curves_title(now, lrs)
    assert resumed_settings(None) is None
