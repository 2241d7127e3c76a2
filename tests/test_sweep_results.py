"""loraplus.sweep results: the summary finds the argmax, records diverged and pruned trials, round
trips through sweep.json, and a real (tiny) training run reports every evaluation.

Runs use the analytic `fake_train` of test_sweep.py (a known argmax over lr_A x ratio).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from test_sweep import DIVERGED, LR_A, calls, config, fake_train, score

from loraplus.sweep import (
    SweepConfig,
    SweepSummary,
    load_summary,
    open_study,
    run_sweep,
    run_worker,
    summarize,
    write_outputs,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)


def stored_means(cfg: SweepConfig) -> dict[tuple[float, float], float]:
    """Seed-mean value per (lr_a, ratio) straight from the study's COMPLETE trials."""
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage_url)
    per: dict[tuple[float, float], list[float]] = {}
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        per.setdefault((t.params["lr_a"], t.params["ratio"]), []).append(float(t.value))
    return {k: sum(v) / len(v) for k, v in per.items()}


def test_best_cells_are_the_argmax_and_a_finished_sweep_is_not_rerun(tmp_path: Path) -> None:
    cfg = config(tmp_path, lr_a=LR_A[1:], ratios=[1, 16], seeds=[0, 1])
    summary = run_sweep(cfg, train_fn=fake_train)
    log = tmp_path / "calls.log"
    done = [c[:3] for c in calls(log)]
    assert len(done) == 16 and len(set(done)) == 16
    assert summary.counts == {"complete": 16}
    assert all(c["state"] == "complete" and c["n"] == 2 for c in summary.cells)

    means = stored_means(cfg)
    best = max(means, key=means.__getitem__)
    lora = max((k for k in means if k[1] == 1.0), key=means.__getitem__)
    assert summary.best is not None and summary.best_lora is not None
    assert (summary.best["lr_a"], summary.best["ratio"]) == best == (2.0**-10, 16.0)
    assert (summary.best_lora["lr_a"], summary.best_lora["ratio"]) == lora == (2.0**-12, 1.0)
    assert summary.best["mean"] == pytest.approx(means[best])
    assert summary.gain == pytest.approx(means[best] - means[lora]) == pytest.approx(0.08)
    assert summary.best["std"] == pytest.approx(math.sqrt(0.5) * 0.001)
    # a trial's value is the best evaluation (step 20), not the last one (step 30)
    row = next(t for t in summary.trials if (t["lr_a"], t["ratio"], t["seed"]) == (LR_A[1], 16, 1))
    assert row["value"] == pytest.approx(score(LR_A[1], 16, 1))
    assert row["best_step"] == 20
    assert row["final_value"] == pytest.approx(0.98 * score(LR_A[1], 16, 1))

    again = run_sweep(cfg, train_fn=fake_train)  # resume a finished study: nothing runs
    assert len(calls(log)) == 16
    assert len(again.trials) == 16


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepConfig, SweepSummary]:
    """A median-pruned sweep: equal runs, one diverging cell, poor runs from trial 6 on."""
    tmp_path = tmp_path_factory.mktemp("mixed")
    cfg = config(
        tmp_path,
        lr_a=LR_A[1:],
        ratios=[1, 16],
        pruner="median",
        overrides={"flat": True, "bad_from": 6, "diverge_above": 2**-6},
    )
    return cfg, run_sweep(cfg, train_fn=fake_train)


def test_diverged_cells_are_recorded_and_the_sweep_goes_on(
    mixed: tuple[SweepConfig, SweepSummary],
) -> None:
    cfg, summary = mixed
    study, _ = open_study(cfg)
    states = {(c["lr_a"], c["ratio"]): c["state"] for c in summary.cells}
    assert [k for k, s in states.items() if s == "diverged"] == [DIVERGED]
    assert set(states.values()) == {"complete", "pruned", "diverged"}
    (trial,) = [t for t in study.trials if (t.params["lr_a"], t.params["ratio"]) == DIVERGED]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["status"] == "diverged"
    assert trial.user_attrs["cause"] == "training loss was NaN/inf at step 7"
    row = next(r for r in summary.trials if r["number"] == trial.number)
    assert (row["status"], row["cause"]) == ("diverged", "training loss was NaN/inf at step 7")
    assert summary.counts["diverged"] == 1 and len(summary.trials) == 8
    assert run_worker(cfg, train_fn=fake_train) == 0  # diverged cells are not retried
    assert len(calls(Path(cfg.overrides["log"]))) == 8


def test_pruned_trials_are_recorded_as_pruned(mixed: tuple[SweepConfig, SweepSummary]) -> None:
    cfg, summary = mixed
    study, _ = open_study(cfg)
    late = [t for t in study.trials[6:] if t.user_attrs["status"] != "diverged"]
    assert late  # every poor run after the 5 startup trials is pruned at its first check
    for t in late:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["status"] == "pruned"
        assert sorted(t.intermediate_values) == [0, 10]
    assert all(t.state != optuna.trial.TrialState.PRUNED for t in study.trials[:6])
    assert summary.counts["pruned"] == len(late)
    assert sum(c["state"] == "pruned" for c in summary.cells) == len(late)
    assert summary.best is not None and summary.best["state"] == "complete"


def test_json_round_trips_and_heatmap_is_a_png(
    mixed: tuple[SweepConfig, SweepSummary], tmp_path: Path
) -> None:
    from matplotlib.image import imread

    cfg, summary = mixed
    paths = write_outputs(summary, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert load_summary(paths["json"]) == summary == SweepSummary.from_dict(data)
    assert len(data["trials"]) == 8 and data["best"] == summary.best
    img = imread(paths["heatmap"])
    assert img.ndim == 3 and min(img.shape[:2]) > 250
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sweep.json",
        "sweep_heatmap.png",
    ]
    assert (Path(cfg.out_dir) / "sweep_heatmap.png").is_file()  # run_sweep wrote its own
    assert summarize(Path(cfg.out_dir) / "sweep.db") == summary  # from the .db path


def test_budget_mode_and_lr_b_grid(tmp_path: Path) -> None:
    cfg = config(tmp_path / "b", lr_a=LR_A[1:], ratios=None, budget=True)
    assert cfg.y == [1.0, 16.0]
    budget = run_sweep(cfg, train_fn=fake_train).budget
    assert budget is not None and budget["trials_each"] == 4
    assert (budget["best_loraplus"]["lr_a"], budget["best_loraplus"]["ratio"]) == (2.0**-10, 16)
    assert (budget["best_lora"]["lr_a"], budget["best_lora"]["ratio"]) == (2.0**-12, 1)
    assert budget["gain"] == pytest.approx(0.08)

    grid = [2.0**-12, 2.0**-10, 2.0**-6]
    cfg = config(tmp_path / "l", lr_a=grid[:2], ratios=None, lr_b=grid)
    summary = run_sweep(cfg, train_fn=fake_train)
    assert summary.axis == "lr_b" and summary.y == grid
    assert summary.cell(2.0**-12, 2.0**-6)["ratio"] == 64.0
    assert summary.best is not None and summary.best_lora is not None
    assert summary.best_lora["lr_a"] == summary.best_lora["lr_b"]  # on the diagonal
    diagonal = [c for c in summary.cells if c["lr_a"] == c["lr_b"]]
    assert summary.best_lora["mean"] == max(c["mean"] for c in diagonal)
    assert summary.best["mean"] == max(c["mean"] for c in summary.cells)
    assert summary.heatmap()["baseline"] == "diagonal"


# ---------------------------------------------------------------------------------------------
# The real trainer on a tiny model
# ---------------------------------------------------------------------------------------------

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "movie", "plot", "the", "a"]


def tiny_classifier(folder: Path) -> Path:
    """A 1-layer BERT (hidden 16) and a word-level tokenizer saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertForSequenceClassification(bert).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_real_trainer_reports_every_evaluation(tmp_path: Path) -> None:
    import csv

    model = tiny_classifier(tmp_path / "model")
    data = tmp_path / "data.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for k in range(48):
            positive = k % 2 == 0
            word = WORDS[k % 3] if positive else WORDS[3 + k % 3]
            writer.writerow([f"the {word} film", "pos" if positive else "neg"])
    cfg = SweepConfig(
        lr_a=[1e-2],
        ratios=[1, 16],
        out_dir=str(tmp_path / "sweep"),
        heartbeat_s=None,
        overrides={
            "model": str(model),
            "data": str(data),
            "target_modules": ["query", "value"],
            "max_steps": 2,
            "eval_steps": 1,
            "batch_size": 8,
            "max_length": 8,
        },
    )
    summary = run_sweep(cfg)
    assert summary.counts == {"complete": 2}
    study, _ = open_study(cfg)
    for t in study.trials:
        assert sorted(t.intermediate_values) == [0, 1, 2]  # eval_on_start + every step
        assert 0.0 <= t.value <= 1.0
    assert summary.best is not None and summary.best_lora is not None
    run = tmp_path / "sweep" / "trials" / "trial_0000"
    history = json.loads((run / "metrics.json").read_text())["history"]
    best = max(r["eval_accuracy"] for r in history if r["step"] > 0)
    assert study.trials[0].value == pytest.approx(best)  # the best evaluation after step 0
    assert not (run / "adapter").exists()  # sweep default: no adapter per cell
