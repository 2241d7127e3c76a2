"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU (DS_ACCELERATOR=cpu, gloo, 2 processes under torchrun).

DeepSpeed steps the optimizer once per param group on its own fp32 partitions, inside backward:
ratio="auto" and the δ probe must still measure the real update, the same on both ranks and as
one process with the same global batch measures it. Also run as a script by torchrun (the
Trainer path: LoraPlusTrainer with `deepspeed=`), each rank writing what it measured.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if os.environ.get("LORAPLUS_REQUIRE_DEEPSPEED") == "1":  # CI (.ci/run): never skip these
    import deepspeed  # noqa: F401
else:
    pytest.importorskip("deepspeed")

from safetensors.torch import load_file
from test_distributed import TORCHRUN, _run
from test_train import NEGATIVE, POSITIVE, WORDS, save_tiny_bert

from loraplus.train import make_config, train

ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def zero_config(folder: Path, stage: int) -> Path:
    """A ZeRO config with no optimizer or scheduler block: the Trainer fills the "auto"s."""
    path = folder / f"zero{stage}.json"
    keys = (
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "train_batch_size",
        "gradient_clipping",  # the Trainer's max_grad_norm, as in the one-process run
    )
    path.write_text(
        json.dumps({"zero_optimization": {"stage": stage}, **dict.fromkeys(keys, "auto")})
    )
    return path


def write_even_data(path: Path, rows: int = 120) -> Path:
    """Reviews that all tokenize to the same length: no rank pads differently from one process.

    120 rows leave 108 to train on: 12 steps of 8 stay in the first epoch, where 2 x 4 and 1 x 8
    see the same batches (an epoch's ragged end is split differently).
    """
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["text", "label"])
        for i in range(rows):
            word = (POSITIVE if i % 2 == 0 else NEGATIVE)[i % 5]
            filler = " ".join(WORDS[10 + i % 7 : 13 + i % 7])
            out.writerow([f"the film {filler} was {word} {i}", "pos" if i % 2 == 0 else "neg"])
    return path


def no_dropout_bert(folder: Path) -> Path:
    """The tiny BERT without dropout, so no RNG draw differs between 2 processes and one."""
    save_tiny_bert(folder, num_labels=2)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ds")
    return {
        "bert": no_dropout_bert(root / "bert"),
        "data": write_even_data(root / "reviews.csv"),
        "zero2": zero_config(root, 2),
        "zero3": zero_config(root, 3),
    }


def _settings(files: dict[str, Path], out: Path, batch: int) -> dict[str, Any]:
    return {
        "model": str(files["bert"]),
        "data": str(files["data"]),
        "max_steps": 12,  # auto measures at steps 0 (B = 0: no balance yet) and 10
        "eval_steps": 12,
        "batch_size": batch,
        "max_length": 32,
        "lr": 3e-3,
        "rank": 4,
        "ratio": "auto",
        "probe_every": 5,
        "report_to": "none",
        "progress": False,
        "output_dir": str(out),
    }


def _flags(settings: dict[str, Any]) -> list[str]:
    out = []
    for key, value in settings.items():
        if key != "progress":
            out += [f"--{key.replace('_', '-')}", str(value)]
    return [*out, "--no-progress"]


def _one_process(run: Any, *args: Any) -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(*args)
    finally:
        torch.set_num_threads(threads)


def _close(got: float | None, want: float | None, rel: float = 1e-4) -> bool:
    if got is None or want is None:
        return got is want
    return math.isclose(got, want, rel_tol=rel, abs_tol=1e-9)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_loraplus_train_under_zero3_measures_what_one_process_measures(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "zero3"  # the model is partitioned as it loads (deepspeed.zero.Init)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "loraplus.cli", "train"]
    cmd += [*_flags(_settings(files, out, 4)), "--deepspeed", str(files["zero3"])]
    proc = _run(cmd, {**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(world size 2)" in proc.stdout and "6: +" in proc.stdout  # a balance, not n/a
    one = _one_process(train, make_config(**_settings(files, tmp_path / "one", 8)))
    ds = json.loads((out / "metrics.json").read_text())
    ref = json.loads((one.output_dir / "metrics.json").read_text())
    assert ds["config"]["deepspeed"] == str(files["zero3"]) and ds["world_size"] == 2

    trained, single = (
        load_file(d / "adapter" / "adapter_model.safetensors") for d in (out, one.output_dir)
    )
    for name, tensor in single.items():  # 2 x 4 rows sum in another order than 1 x 8: ~1e-5
        scale = float(tensor.abs().max())
        torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=1e-4 * scale)
    assert [r["step"] for r in ds["feature_updates"]] == [1.0, 6.0, 11.0]
    for got, want in zip(ds["feature_updates"], ref["feature_updates"], strict=True):
        assert len(got["layers"]) == len(want["layers"]) == 4
        for g, w in zip(got["layers"], want["layers"], strict=True):
            for key in ("delta_a", "delta_b", "delta_ab", "balance_log2"):
                assert _close(g[key], w[key]), (got["step"], g["layer"], key, g[key], w[key])
    assert all(layer["delta_b"] > 0 for layer in ds["feature_updates"][0]["layers"])
    chosen = [{k: v for k, v in r.items() if k.startswith("auto_ratio/")} for r in ds["history"]]
    wanted = [{k: v for k, v in r.items() if k.startswith("auto_ratio/")} for r in ref["history"]]
    assert [list(c) for c in chosen] == [list(w) for w in wanted]
    assert [pytest.approx(list(w.values())) for w in wanted] == [list(c.values()) for c in chosen]
    assert chosen[-1]["auto_ratio/q"] != 16.0  # step 10 measured a balance and moved the ratio


def trainer_run(
    out: Path, batch: int, deepspeed: str | None, ratio: float | str = "auto"
) -> dict[str, Any]:
    """LoraPlusTrainer and the probe on the tiny BERT: what was measured, chosen and trained."""
    from peft import LoraConfig, get_peft_model
    from test_hf import cls_data
    from tiny import tiny_bert

    from loraplus.autoratio import auto_ratio_logs, controller, lora_pairs
    from loraplus.hf import LoraPlusTrainer, LoraPlusTrainingArguments
    from loraplus.hf.callbacks import FeatureUpdateCallback

    base = tiny_bert(3)
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    for pair in lora_pairs(model):  # init2-like start: B ≠ 0, so step 0 has a balance too
        torch.nn.init.normal_(pair.b, std=0.02, generator=torch.Generator().manual_seed(1))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = LoraPlusTrainingArguments(
        output_dir=str(out),
        use_cpu=True,
        per_device_train_batch_size=batch,
        learning_rate=3e-3,
        max_steps=11,
        logging_steps=11,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        loraplus_lr_ratio=ratio,
        deepspeed=deepspeed,
        **({"ddp_backend": "gloo"} if distributed else {}),
    )
    probe = FeatureUpdateCallback(every=5)
    trainer = LoraPlusTrainer(model=model, args=args, train_dataset=cls_data(96), callbacks=[probe])
    trainer.model_accepts_loss_kwargs = False  # a batch-mean loss: not scaled by the world size
    trainer.train()
    auto = controller(trainer.optimizer)
    lora = {n: p.detach().tolist() for n, p in model.named_parameters() if "lora_" in n}
    return {
        "state": auto.auto_state() if auto is not None else None,
        "logs": auto_ratio_logs(trainer.optimizer),
        "probe": probe.history,
        "adapter": lora,  # ZeRO-2 keeps whole tensors on every rank
    }


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_trainer_under_zero2_steers_like_one_process(
    files: dict[str, Path], tmp_path: Path
) -> None:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", __file__]
    cmd += [str(tmp_path), str(files["zero2"])]
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([*sys.path])}
    proc = _run(cmd, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank measured and chose the same
    ref = _one_process(trainer_run, tmp_path / "one", 8, None)
    got = ranks[0]["auto"]
    assert got["state"]["steps"] == ref["state"]["steps"] == 11
    assert got["state"]["layers"] == ref["state"]["layers"]
    for key in ("last_balance", "balance_ema", "log2_ratio"):
        assert got["state"][key] == pytest.approx(ref["state"][key], rel=1e-4), key
    assert all(b is not None for b in got["state"]["last_balance"])  # measured, not 0
    assert all(r == 3.5 for r in got["state"]["log2_ratio"])  # 2 updates of -1/4 from log2 16
    assert got["logs"] and got["logs"] == pytest.approx(ref["logs"])  # through DS's wrappers
    assert [r["step"] for r in got["probe"]] == [1.0, 6.0, 11.0]
    for g, w in zip(got["probe"], ref["probe"], strict=True):
        for gl, wl in zip(g["layers"], w["layers"], strict=True):
            for key in ("delta_a", "delta_b", "delta_ab"):
                assert gl[key] > 0 and _close(gl[key], wl[key]), (g["step"], gl["layer"], key)
    # a fixed ratio: the same adapter and δ's as one process, and no controller anywhere
    fixed, want = ranks[0]["fixed"], _one_process(trainer_run, tmp_path / "one4", 8, None, 4.0)
    assert fixed["state"] is None and fixed["logs"] == {} and len(fixed["probe"]) == 3
    for name, values in want["adapter"].items():
        tensor = torch.tensor(values)
        scale = 1e-4 * float(tensor.abs().max())
        torch.testing.assert_close(
            torch.tensor(fixed["adapter"][name]), tensor, rtol=1e-4, atol=scale
        )
    for g, w in zip(fixed["probe"], want["probe"], strict=True):
        for gl, wl in zip(g["layers"], w["layers"], strict=True):
            assert _close(gl["balance_log2"], wl["balance_log2"]), (g["step"], gl["layer"])


if __name__ == "__main__":  # one rank of test_trainer_under_zero2_steers_like_one_process
    folder, config = Path(sys.argv[1]), sys.argv[2]
    result = {
        "auto": trainer_run(folder / "auto", 4, config),
        "fixed": trainer_run(folder / "fixed", 4, config, 4.0),
    }
    rank = int(os.environ["RANK"])
    (folder / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        (None, [], "no such file; pass a DeepSpeed JSON config"),
        ("{not json", [], "is not valid JSON"),
        ('{"optimizer": {"type": "AdamW"}}', [], 'delete the "optimizer" block'),
        ('{"scheduler": {"type": "WarmupLR"}}', [], "WarmupCosineLR"),
        ("{}", ["--lora-optimizer", "lorafa"], "lorafa trains every LoRA param at --lr"),
    ],
)
def test_bad_deepspeed_configs_exit_2_before_training(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config: str | None,
    extra: list[str],
    message: str,
) -> None:
    from loraplus import cli

    path = tmp_path / "ds.json"
    if config is not None:
        path.write_text(config)
    out = tmp_path / "out"
    settings = {**_settings(files, out, 4), "ratio": 16.0, "probe_every": 0}
    argv = ["train", *_flags(settings), "--deepspeed", str(path), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
