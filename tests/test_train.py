"""train.py: config files and coercion, tokenization masks, and short runs on tiny saved models.

The tiny models are saved to disk with a word-level tokenizer built in code, so `model=<folder>`
goes through the same from_pretrained path as a real checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import tiny_bert, tiny_llama
from transformers import TrainerCallback

from loraplus.train import (
    TrainConfig,
    make_config,
    read_record,
    train,
)

WORDS = [
    "good",
    "great",
    "fun",
    "superb",
    "lovely",
    "bad",
    "awful",
    "boring",
    "dull",
    "poor",
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "the",
    "a",
    "is",
    "was",
    "and",
    "very",
    "not",
    "review",
    "verdict",
    "text",
    "label",
    "yes",
    "no",
]
POSITIVE = ("good", "great", "fun", "superb", "lovely")
NEGATIVE = ("bad", "awful", "boring", "dull", "poor")


def _tokenizer(specials: list[str], template: str, **tokens: str) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=tokens["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join([*WORDS, ":", "."])], trainers.WordLevelTrainer(special_tokens=specials)
    )
    special_ids = [(t, specials.index(t)) for t in specials if t in template]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=special_ids)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


def save_tiny_bert(folder: Path, num_labels: int = 3) -> Path:
    """A tiny BERT classifier + word-level tokenizer saved as a from_pretrained folder."""
    tokenizer = _tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "[CLS] $A [SEP]",
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    tiny_bert(num_labels).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path) -> Path:
    """A tiny Llama causal LM + word-level tokenizer (BOS added, no pad token) in a folder."""
    tokenizer = _tokenizer(
        ["<unk>", "<s>", "</s>"], "<s> $A", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    model = tiny_llama()
    model.config.bos_token_id, model.config.eos_token_id = 1, 2
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_cls_data(path: Path, rows: int = 120) -> Path:
    """A CSV of short reviews whose label is the sentiment word in them."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["text", "label"])
        for i in range(rows):
            positive = i % 2 == 0
            word = (POSITIVE if positive else NEGATIVE)[i % 5]
            noun = ("movie", "film", "plot", "actor", "story")[(i // 5) % 5]
            filler = " ".join(WORDS[10 + (i // 25) % 10 : 12 + (i // 25) % 10 + i % 4])
            out.writerow([f"the {noun} {filler} was {word} {i}", "pos" if positive else "neg"])
    return path


def write_lm_data(path: Path, rows: int = 80) -> Path:
    """A CSV of prompt/response pairs: a review and its yes/no verdict."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["prompt", "response"])
        for i in range(rows):
            positive = i % 2 == 0
            word = (POSITIVE if positive else NEGATIVE)[i % 5]
            filler = " ".join(WORDS[10 : 10 + i % 7])
            out.writerow([f"review : {filler} {word} {i} . verdict :", "yes" if positive else "no"])
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny models and data files, shared by the train and CLI tests."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bert": save_tiny_bert(root / "bert"),
        "llama": save_tiny_llama(root / "llama"),
        "cls": write_cls_data(root / "reviews.csv"),
        "lm": write_lm_data(root / "verdicts.csv"),
    }


def tiny_cls_config(files: dict[str, Path], out: Path, **overrides: Any) -> TrainConfig:
    """A few steps of the tiny BERT on the tiny reviews."""
    settings: dict[str, Any] = {
        "model": str(files["bert"]),
        "data": str(files["cls"]),
        "max_steps": 6,
        "eval_steps": 3,
        "batch_size": 8,
        "max_length": 32,
        "lr": 1e-3,
        "rank": 4,
        "report_to": "none",
        "progress": False,
        "output_dir": str(out),
    }
    settings.update(overrides)
    return make_config(**settings)


class KeepModel(TrainerCallback):
    """Remembers the trained model (callbacks get it as a keyword)."""

    model: Any = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.model = kwargs["model"]


# --- config ----------------------------------------------------------------------------------


def test_yaml_config_strings_are_coerced_and_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        'lr: "1e-4"\nrank: "4"\nalpha: 8\nmerge: "true"\nmax-train: null\n'
        "target_modules: query, value\nreport_to: none\nepochs: '2'\n"
    )
    cfg = make_config(path, rank="16", batch_size="8")
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.rank == 16 and cfg.batch_size == 8  # overrides beat the file
    assert cfg.alpha == 8.0 and isinstance(cfg.alpha, float)
    assert cfg.merge is True and cfg.max_train is None and cfg.epochs == 2.0
    assert cfg.target_modules == ["query", "value"]
    assert cfg.report_to == []


def test_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "minilm"\nlr = "3e-4"\nratio = 4\nmax_steps = "1000"\n'
        'target_modules = "all-linear"\nreport_to = ["tensorboard"]\nprogress = false\n'
    )
    cfg = make_config(path)
    assert (cfg.lr, cfg.ratio, cfg.max_steps) == (3e-4, 4.0, 1000)
    assert isinstance(cfg.max_steps, int)
    assert cfg.target_modules == ["all-linear"] and cfg.report_to == ["tensorboard"]
    assert cfg.progress is False
    path.write_text('max_steps = "1e3"\n')  # a step count is a whole number, as on the CLI
    with pytest.raises(ValueError, match=r"Bad value for max_steps in .*run\.toml: invalid int"):
        make_config(path)


def test_unknown_key_lists_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 1e-4\nlearning_rate: 1e-4\n")
    with pytest.raises(ValueError, match=r"learning_rate.*Valid: model, data, task, .*, lr, ratio"):
        make_config(path)
    with pytest.raises(ValueError, match="Unknown setting"):
        make_config(warmup=0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": "fast"}, "Bad value for lr: invalid float value: 'fast'"),
        ({"lr": -1}, "lr must be > 0"),
        ({"rank": 2.5}, "Bad value for rank: invalid int value: '2.5'"),
        ({"rank": 0}, "rank must be >= 1"),
        ({"init": "init3"}, "init must be one of init1, init2"),
        ({"task": "regression"}, "task must be one of"),
        ({"merge": "maybe"}, "Bad value for merge: Truthy value expected"),
        ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\)"),
        ({"max_steps": 0}, "max_steps must be > 0"),
        ({"probe_every": -1}, "probe_every must be >= 0"),
        ({"lr_multipliers": "classifier=2"}, "Unknown role 'classifier': use one of lora_A"),
        ({"lr_multipliers": "other:2"}, "takes ROLE=NUMBER pairs"),
        ({"lr_multipliers": {"other": -1}}, r"lr_multipliers\[other\] must be >= 0"),
        ({"target_modules": "all-linear,query"}, "all-linear cannot be combined"),
    ],
)
def test_bad_values_are_refused_with_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        make_config(tmp_path / "list.yaml")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        make_config(tmp_path / "x.json")


def test_config_round_trips_through_a_dict() -> None:
    cfg = make_config(lr="5e-4", target_modules=["q", "v"], max_eval=10)
    assert make_config(**cfg.to_dict()) == cfg


# --- training runs ---------------------------------------------------------------------------


def test_train_tiny_bert_writes_everything_and_the_adapter_reloads(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    keep = KeepModel()
    cfg = tiny_cls_config(tiny_files, tmp_path / "run", ratio=8)
    result = train(cfg, callbacks=[keep])

    assert not result.diverged and result.output_dir == tmp_path / "run"
    assert [row["step"] for row in result.history] == [0, 3, 6]
    first, last = result.history[0], result.history[-1]
    assert first["train_loss"] is None and math.isfinite(last["train_loss"])
    assert 0.0 <= last["eval_accuracy"] <= 1.0 and math.isfinite(last["eval_loss"])
    assert first["lr/lora_B"] == pytest.approx(8 * first["lr/lora_A"])
    assert first["lr/lora_A"] == pytest.approx(1e-3)
    assert result.final["steps"] == 6 and result.final["seconds"] > 0
    trained = [r["eval_accuracy"] for r in result.history if r["step"] > 0]
    assert result.final["best_eval_accuracy"] == max(trained)  # the step-0 eval is no result

    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics == result.to_dict()  # the record is the file: every field, nothing else
    assert "output_dir" not in metrics and "main_process" not in metrics
    assert read_record(result.output_dir) == result  # read back as the same record
    assert make_config(**metrics["config"]) == cfg
    assert {g["role"] for g in metrics["param_groups"]} >= {"lora_A", "lora_B", "head"}
    assert result.data["train_rows"] > 0 and result.global_batch_size == cfg.batch_size
    assert (result.output_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (result.output_dir / "merged").exists()
    assert not list(result.output_dir.glob(".*"))  # no temp files left behind

    adapter = result.output_dir / "adapter"
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_files["bert"], num_labels=2, ignore_mismatched_sizes=True
    )
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    batch = tokenizer(
        ["the movie was good", "the plot was dull and boring"], padding=True, return_tensors="pt"
    )
    trained = keep.model.eval()
    with torch.no_grad():
        assert torch.allclose(trained(**batch).logits, reloaded(**batch).logits, atol=1e-5)


def test_train_causal_lm_with_merge(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cls_config(
        tiny_files,
        tmp_path / "lm",
        model=str(tiny_files["llama"]),
        data=str(tiny_files["lm"]),
        task="causal-lm",
        init="init2",
        merge=True,
        eval_steps=4,
    )
    result = train(cfg)
    assert [row["step"] for row in result.history] == [0, 4, 6]  # final eval at the last step
    assert all(math.isfinite(row["eval_loss"]) for row in result.history)
    assert "eval_accuracy" not in result.history[0]
    assert result.final["metric"] == "eval_loss"
    assert result.final["best_eval_loss"] == min(r["eval_loss"] for r in result.history)

    merged_dir, adapter_dir = result.output_dir / "merged", result.output_dir / "adapter"
    assert (merged_dir / "model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_files["llama"]), adapter_dir
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer(["review : good film . verdict :"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_files["llama"]).eval()
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-5)  # it trained


def greedy_hits(model: Any, batch: dict[str, Any]) -> tuple[int, int]:
    """(rows whose answer `generate` reproduces greedily, rows with an answer), row by row: an
    implementation of exact match independent of the run's teacher-forced argmax."""
    hits = total = 0
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        answer = (labels != -100).nonzero().flatten()
        if not len(answer):
            continue
        start, n = int(answer[0]), len(answer)
        with torch.no_grad():
            out = model.generate(ids[:start].unsqueeze(0), max_new_tokens=n, do_sample=False)
        hits += int(torch.equal(out[0, start:], ids[start : start + n]))
        total += 1
    return hits, total


def test_exact_match_is_the_greedy_answer_through_eos() -> None:
    from loraplus.train.trainer import answered

    def exact_match(predicted: torch.Tensor, labels: torch.Tensor) -> float:
        right, scored = answered(predicted, labels)
        return int(right.sum()) / int(scored.sum()) if scored.any() else math.nan

    model = tiny_llama(vocab_size=16).eval()
    prompt = torch.tensor([[1, 5, 6]])
    with torch.no_grad():
        g1, g2 = model.generate(prompt, max_new_tokens=2, do_sample=False)[0, 3:].tolist()
    ids = torch.tensor([[1, 5, 6, g1, g2], [1, 5, 6, g1, (g2 + 1) % 16], [1, 5, 6, g1, 0]])
    labels = ids.clone()
    labels[:, :3] = -100
    labels[2, 4] = -100  # a one-token answer, then padding
    with torch.no_grad():
        predicted = model(input_ids=ids).logits.argmax(dim=-1)
    batch = {"input_ids": ids, "labels": labels}
    hits, total = greedy_hits(model, batch)
    assert (hits, total) == (2, 3)
    assert exact_match(predicted, labels) == pytest.approx(2 / 3)
    no_answer = torch.full_like(labels, -100)
    both = (torch.cat([predicted, predicted]), torch.cat([labels, no_answer]))
    assert exact_match(*both) == pytest.approx(2 / 3)  # rows without an answer do not count
    assert math.isnan(exact_match(predicted, no_answer))


class GreedyCheck(TrainerCallback):
    """At each evaluation, exact match by `generate` over the eval loader, beside the run's."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, float]] = []  # step, run's value, generate's

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, hits, total = kwargs["model"], 0, 0
        model.eval()
        for batch in kwargs["eval_dataloader"]:
            h, t = greedy_hits(model, batch)
            hits, total = hits + h, total + t
        self.seen.append((state.global_step, kwargs["metrics"]["eval_exact_match"], hits / total))


def test_exact_match_reaches_history_and_matches_generate(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    check = GreedyCheck()
    cfg = tiny_cls_config(
        tiny_files,
        tmp_path / "lm",
        model=str(tiny_files["llama"]),
        data=str(tiny_files["lm"]),
        task="causal-lm",
        exact_match=True,
        lr=2e-2,
        ratio=16,
        scheduler="constant",
        max_steps=12,
        eval_steps=6,
        save_adapter=False,
    )
    result = train(cfg, callbacks=[check])
    assert [r["step"] for r in result.history] == [0, 6, 12]
    assert [s for s, _, _ in check.seen] == [0, 6, 12]
    for (_, ours, theirs), row in zip(check.seen, result.history, strict=True):
        assert ours == theirs == row["eval_exact_match"]
    assert check.seen[-1][1] > 0  # it learned some answers: the comparison is not 0 == 0
    assert result.final["eval_exact_match"] == check.seen[-1][1]
    assert read_record(result.output_dir).final["eval_exact_match"] == check.seen[-1][1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "--exact-match apply to --task causal-lm"),
        ({"task": "causal-lm", "packing": True}, "--exact-match scores each eval row's answer"),
    ],
)
def test_exact_match_needs_unpacked_causal_lm(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(exact_match=True, **overrides)


class PoisonWeights(TrainerCallback):
    """Writes NaN into a LoRA matrix after step 2, as a diverging run would."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            with torch.no_grad():
                for name, param in kwargs["model"].named_parameters():
                    if "lora_B" in name:
                        param.fill_(float("nan"))


def test_nan_loss_stops_training_and_marks_diverged(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_cls_config(tiny_files, tmp_path / "nan", max_steps=20, eval_steps=10)
    result = train(cfg, callbacks=[PoisonWeights()])
    assert result.diverged
    assert result.final["steps"] < 20
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["diverged_at_step"] == result.final["steps"]
    assert result.diverged_reason == metrics["diverged_reason"]
    assert result.diverged_reason.startswith(f"diverged at step {result.final['steps']}: the ")
    assert result.final["eval_accuracy"] is None  # no final metrics from a diverged run
    assert not (result.output_dir / "adapter").exists()  # NaN weights are never saved


def test_lr_multipliers_reach_the_optimizer(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_cls_config(
        tiny_files, tmp_path / "mult", lr_multipliers="head=16 vector=0.5", save_adapter=False
    )
    assert cfg.lr_multipliers == ["head=16", "vector=0.5"]
    assert cfg.multipliers() == {"head": 16.0, "vector": 0.5}
    metrics = json.loads((train(cfg).output_dir / "metrics.json").read_text())
    lrs = {g["role"]: g["lr"] for g in metrics["param_groups"]}
    assert lrs["head"] == pytest.approx(16 * 1e-3) and lrs["lora_A"] == pytest.approx(1e-3)
    assert lrs["lora_B"] == pytest.approx(16 * 1e-3)  # the ratio is untouched
    assert lrs["vector"] == pytest.approx(0.5 * 1e-3)


def test_lr_roles_reach_the_optimizer(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_cls_config(tiny_files, tmp_path / "roles", lr_roles="head=0.02", save_adapter=False)
    assert cfg.role_lrs() == {"head": 0.02}
    metrics = json.loads((train(cfg).output_dir / "metrics.json").read_text())
    lrs = {g["role"]: g["lr"] for g in metrics["param_groups"]}
    assert lrs["head"] == 0.02 and lrs["lora_A"] == pytest.approx(1e-3)
    assert lrs["lora_B"] == pytest.approx(16e-3)


class TrainBatches(TrainerCallback):
    """Records the input_ids of every training forward pass, in order."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        def record(module: Any, args: Any, kw: dict[str, Any]) -> None:
            if module.training:
                self.batches.append(kw["input_ids"].tolist())

        kwargs["model"].register_forward_pre_hook(record, with_kwargs=True)


def test_data_seed_fixes_the_data_while_the_seed_varies(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    from loraplus.data import load_data
    from loraplus.train.checks import data_options

    def run(name: str, **seeds: int) -> tuple[list[str], list[list[list[int]]]]:
        cfg = tiny_cls_config(tiny_files, tmp_path / name, max_train=40, **seeds)
        rows = [r["text"] for r in load_data(cfg.data, **data_options(cfg)).train]
        batches = TrainBatches()
        train(cfg, callbacks=[batches])
        return rows, batches.batches

    fixed_0, fixed_1 = run("a", seed=0, data_seed=5), run("b", seed=1, data_seed=5)
    assert fixed_0 == fixed_1 and len(fixed_0[1]) == 6  # same subset, same shuffle
    assert run("c", seed=5)[0] == fixed_0[0]  # data_seed defaults to seed
    plain_0, plain_1 = run("d", seed=0), run("e", seed=1)
    assert plain_0[0] != plain_1[0] and plain_0[1] != plain_1[1]


def test_early_stopping_ends_a_run_that_stopped_improving(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    """lr 1e-12 leaves accuracy where it is: with patience 1 the run ends at the 2nd eval after
    step 0 (the first sets the best; the step-0 evaluation does not count)."""
    cfg = tiny_cls_config(
        tiny_files,
        tmp_path / "stop",
        lr=1e-12,
        eval_steps=1,
        early_stopping_patience=1,
        save_adapter=False,
    )
    result = train(cfg)
    assert result.final["steps"] == 2 < cfg.max_steps
    assert [r["step"] for r in result.history] == [0, 1, 2]
    full = train(tiny_cls_config(tiny_files, tmp_path / "full", lr=1e-12, eval_steps=1))
    assert full.final["steps"] == cfg.max_steps  # the same run without patience goes on


def test_width_aware_groups_in_metrics(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    """--width-aware: tiny BERT's intermediate.dense (fan-in 32) vs output.dense (fan-in 64)."""
    cfg = tiny_cls_config(
        tiny_files,
        tmp_path / "wa",
        width_aware=True,
        n_ref="32",
        target_modules="query value dense",
        max_steps=1,
        save_adapter=False,
    )
    metrics = json.loads((train(cfg).output_dir / "metrics.json").read_text())
    lora_a = {g["fan_in"]: g["lr"] for g in metrics["param_groups"] if g["role"] == "lora_A"}
    assert lora_a == {32: pytest.approx(1e-3), 64: pytest.approx(0.5e-3)}


def test_probe_records_the_feature_update_balance(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_cls_config(tiny_files, tmp_path / "probe", probe_every=2, save_adapter=False)
    metrics = json.loads((train(cfg).output_dir / "metrics.json").read_text())
    rows = metrics["feature_updates"]
    assert [r["step"] for r in rows] == [1, 3, 5]
    first, later = rows[0], rows[1]
    assert first["delta_a"] == 0.0 and first["delta_b"] > 0.0  # Init[1]: B = 0, so δ¹ = 0
    assert first["balance_log2"] is None  # log2(δ²/0) is written as null, not Infinity
    assert later["delta_a"] > 0.0 and math.isfinite(later["balance_log2"])


def test_tensorboard_logs_go_into_the_output_dir(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_cls_config(
        tiny_files,
        tmp_path / "tb",
        report_to="tensorboard",
        max_steps=2,
        eval_steps=2,
        save_adapter=False,
    )
    result = train(cfg)
    assert list((result.output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (result.output_dir / "adapter").exists()
