"""One LoRA+ training run: TrainConfig -> model + data + LoraPlusTrainer -> metrics and adapter.

`make_config(path, **overrides)` builds a validated TrainConfig from a YAML/TOML file and keyword
overrides (numbers written as strings are converted); `train(cfg)` runs it and writes into
`cfg.output_dir`: metrics.json, curves.png, adapter/ (PEFT format) and, with merge, merged/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus import zoo
from loraplus._io import atomic_dir, write_json
from loraplus.init import SCHEMES
from loraplus.roles import as_role

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, TrainerCallback

log = logging.getLogger(__name__)

__all__ = [
    "CausalLMCollator",
    "RunRecorder",
    "TrainConfig",
    "TrainResult",
    "make_config",
    "tokenize",
    "train",
]

IGNORE_INDEX = -100
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
_LOGGING_STEPS_MAX = 10  # train loss is logged every min(10, eval_steps) steps


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything one training run needs; every field is a `loraplus train` flag."""

    model: str = field(default="minilm", metadata=_help("built-in name, local folder or hub id"))
    data: str = field(default="rotten-tomatoes", metadata=_help("built-in dataset or data file"))
    task: str = field(default="classification", metadata=_help("classification or causal-lm"))
    lr: float = field(default=2e-4, metadata=_help("learning rate of LoRA A (lr_A)"))
    ratio: float = field(default=16.0, metadata=_help("lr_B / lr_A; 1 = standard LoRA"))
    lr_embedding: float | None = field(
        default=None, metadata=_help("lr of embedding adapters (default: ratio * lr)")
    )
    lr_multipliers: dict[str, float] | None = field(
        default=None,
        metadata=_help("per-role lr = multiplier * lr, e.g. other=16 vector=1 (README role table)"),
    )
    rank: int = field(default=8, metadata=_help("LoRA rank r"))
    alpha: float = field(default=16.0, metadata=_help("LoRA alpha (scale alpha / r)"))
    dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    target_modules: list[str] | str | None = field(
        default=None,
        metadata=_help("modules to adapt (names, or all-linear); default: per architecture"),
    )
    init: str = field(default="init1", metadata=_help("init1 (B = 0) or init2 (A = 0)"))
    epochs: float = field(default=1.0, metadata=_help("epochs (ignored when max-steps > 0)"))
    max_steps: int = field(default=-1, metadata=_help("optimizer steps; -1 = use epochs"))
    batch_size: int = field(default=16, metadata=_help("per-device train batch size"))
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps"))
    max_length: int = field(default=64, metadata=_help("truncate examples to this many tokens"))
    eval_steps: int = field(default=50, metadata=_help("evaluate every this many steps"))
    seed: int = field(default=0, metadata=_help("seed of the split, the head and the shuffle"))
    output_dir: str = field(default="runs/train", metadata=_help("where outputs are written"))
    optimizer: str = field(default="adamw_torch", metadata=_help("HF optim name"))
    scheduler: str = field(default="linear", metadata=_help("HF lr scheduler name"))
    warmup_ratio: float = field(default=0.0, metadata=_help("fraction of steps of lr warmup"))
    weight_decay: float = field(default=0.0, metadata=_help("weight decay of the matrices"))
    max_train: int | None = field(default=None, metadata=_help("at most this many train rows"))
    max_eval: int | None = field(default=None, metadata=_help("at most this many eval rows"))
    save_adapter: bool = field(default=True, metadata=_help("save the adapter (PEFT format)"))
    merge: bool = field(default=False, metadata=_help("also save the merged full model"))
    probe_every: int = field(
        default=0,
        metadata=_help("every k steps record δ¹ (A) and δ² (B), the paper's feature-update terms"),
    )
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata=_help("logging integrations (tensorboard, wandb, ...) or none"),
    )
    progress: bool = field(default=True, metadata=_help("show a progress bar"))

    def __post_init__(self) -> None:
        """Coerce every field to its type ("1e-4" -> 1e-4) and check the values."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _TYPES[f.name]))
        self.target_modules = _targets(self.target_modules)
        self.report_to = [r for r in self.report_to if r.lower() != "none"]
        self._check()

    def _check(self) -> None:
        if self.task not in zoo.TASKS:
            raise ValueError(f"task must be one of {', '.join(zoo.TASKS)}, got {self.task!r}.")
        positive = {"lr": self.lr, "ratio": self.ratio, "alpha": self.alpha}
        positive.update({"epochs": self.epochs} if self.max_steps <= 0 else {})
        if self.lr_embedding is not None:
            positive["lr_embedding"] = self.lr_embedding
        for name, value in positive.items():
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
        at_least_one = {
            "rank": self.rank,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_length": self.max_length,
            "eval_steps": self.eval_steps,
        }
        at_least_one.update({"max_train": self.max_train} if self.max_train is not None else {})
        at_least_one.update({"max_eval": self.max_eval} if self.max_eval is not None else {})
        for name, number in at_least_one.items():
            if number < 1:
                raise ValueError(f"{name} must be >= 1, got {number!r}.")
        for role, mult in (self.lr_multipliers or {}).items():
            if not mult >= 0 or not math.isfinite(mult):
                raise ValueError(f"lr_multipliers[{role}] must be >= 0, got {mult!r}.")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 (0: off), got {self.probe_every}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"max_steps must be > 0, or -1 to train for `epochs`, got {self.max_steps}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if not self.weight_decay >= 0.0 or not math.isfinite(self.weight_decay):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.init not in SCHEMES:
            raise ValueError(f"init must be one of {', '.join(SCHEMES)}, got {self.init!r}.")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML-able values (make_config(**d) rebuilds it)."""
        return dataclasses.asdict(self)


_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


@dataclass
class TrainResult:
    """What one run produced: eval history, final metrics, where the files are, divergence."""

    history: list[dict[str, Any]]  # one row per eval: step, eval metrics, train_loss, lr/<role>
    final: dict[str, Any]  # last eval metrics, best_eval_*, steps, seconds
    output_dir: Path
    diverged: bool  # a NaN/inf training loss stopped the run


# ---------------------------------------------------------------------------------------------
# Config: files, overrides, coercion
# ---------------------------------------------------------------------------------------------


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """`value` as the annotated type `kind`: strings from YAML/CLI become numbers and bools."""
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (
            isinstance(value, str) and value.strip().lower() in ("none", "null")
        )
        if is_none and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        errors = []
        for member in members:  # list before str: "q,v" is a list of two names
            try:
                return _coerce(name, value, member)
            except ValueError as err:
                errors.append(err)
        raise errors[-1]
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    if kind is int:
        number = _number(name, value)
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}.")
        return int(number)
    if kind is float:
        return _number(name, value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r} ({type(value).__name__}).")
        return value
    if origin is dict:
        if isinstance(value, Mapping):
            pairs = list(value.items())
        else:  # "other=16,vector=1" or ["other=16", "vector=1"]
            texts = [value] if isinstance(value, str) else list(value)
            items = [v for t in texts for v in re.split(r"[,\s]+", str(t)) if v]
            if not all(item.count("=") == 1 for item in items):
                raise ValueError(f"{name} must be ROLE=NUMBER pairs (other=16), got {value!r}.")
            pairs = [tuple(item.split("=")) for item in items]
        return {as_role(str(k)).value: _number(f"{name}[{k}]", v) for k, v in pairs}
    if origin is list:
        if isinstance(value, str):
            items = [v for v in re.split(r"[,\s]+", value) if v]
        elif isinstance(value, (list, tuple)):
            items = [v for item in value for v in re.split(r"[,\s]+", str(item)) if v]
        else:
            raise ValueError(f"{name} must be a list of names, got {value!r}.")
        return items
    raise TypeError(f"No coercion for field {name!r} of type {kind!r}.")  # pragma: no cover


def _number(name: str, value: Any) -> float:
    """A finite float from a number or a numeric string ("1e-4")."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the boolean {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return number


def _targets(value: list[str] | str | None) -> list[str] | str | None:
    """target_modules: None, "all-linear", or a list of module names ("q,v" -> ["q", "v"])."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = [v for item in items for v in re.split(r"[,\s]+", item) if v]
    if not names:
        raise ValueError("target_modules is empty: pass module names (query value) or all-linear.")
    if any(n.lower().replace("_", "-") == "all-linear" for n in names):
        if len(names) > 1:
            raise ValueError(f"target_modules: all-linear cannot be combined with {names}.")
        return "all-linear"
    return names


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a .yaml/.yml or .toml file (keys with '-' read as '_')."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    suffix = file.suffix.lower()
    text = file.read_text(encoding="utf-8")
    data: Any
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"Cannot parse {file} as YAML: {err}") from None
    elif suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"Cannot parse {file} as TOML: {err}") from None
    else:
        raise ValueError(f"Config file {file} must end in .yaml, .yml or .toml.")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"Config file {file} must hold a mapping of settings, got {data!r}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def make_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a YAML/TOML file (optional), then `overrides`; unknown keys raise."""
    values = read_config_file(path) if path is not None else {}
    values.update({k.replace("-", "_"): v for k, v in overrides.items()})
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        where = f" in {path}" if path is not None else ""
        raise ValueError(
            f"Unknown setting(s){where}: {', '.join(unknown)}. Valid: {', '.join(valid)}."
        )
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------
# Data: tokenization and collation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `Map: 100%` bars while tokenizing in memory."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _causal_example(
    prompt: list[int], response: list[int], max_length: int, bos: int | None
) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 on the prompt) within max_length; the prompt's end is kept."""
    if len(prompt) + len(response) > max_length:
        response = response[: max(1, max_length // 2)]
    budget = max_length - len(response)
    if len(prompt) > budget:
        keep_bos = bos is not None and bool(prompt) and prompt[0] == bos and budget > 1
        tail = prompt[len(prompt) - (budget - 1 if keep_bos else budget) :] if budget > 0 else []
        prompt = ([bos] if keep_bos and bos is not None else []) + tail
    return prompt + response, [IGNORE_INDEX] * len(prompt) + list(response)


def tokenize(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int
) -> Dataset:
    """Token ids for a text/label (classification) or prompt/response (causal-lm) dataset.

    Causal-LM rows get labels equal to the ids on the response (plus EOS) and -100 on the prompt.
    """
    if task == "classification":

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            out = tokenizer(batch["text"], truncation=True, max_length=max_length)
            return {**out, "labels": batch["label"]}

    else:
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            prompts = tokenizer(batch["prompt"], add_special_tokens=True)["input_ids"]
            responses = tokenizer(batch["response"], add_special_tokens=False)["input_ids"]
            ids, labels = [], []
            for p, r in zip(prompts, responses, strict=True):
                x, y = _causal_example(p, r + ([eos] if eos is not None else []), max_length, bos)
                ids.append(x)
                labels.append(y)
            mask = [[1] * len(x) for x in ids]
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    with _quiet_datasets():
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


@dataclass
class CausalLMCollator:
    """Right-pads input_ids (pad id), attention_mask (0) and labels (-100) to the longest row."""

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """One padded batch of tensors."""
        import torch

        width = max(len(f["input_ids"]) for f in features)

        def pad(key: str, value: int) -> torch.Tensor:
            rows = [list(f[key]) + [value] * (width - len(f[key])) for f in features]
            return torch.tensor(rows, dtype=torch.long)

        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX),
        }


def _by_length(dataset: Dataset) -> Dataset:
    """Eval rows sorted by length, so dynamic padding pads little (metrics do not change)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def _default_targets(cfg: TrainConfig, model: Any) -> list[str] | str:
    """The built-in model's LoRA targets, else PEFT's per-architecture default, else all-linear."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

    key = cfg.model.strip().lower().replace("_", "-")
    for spec in zoo.MODELS.values():
        if key == spec.name or key in spec.aliases:
            return list(spec.lora_targets)
    model_type = getattr(model.config, "model_type", None)
    if model_type in known:
        return list(known[model_type])
    log.info("No default LoRA targets for model type %r: adapting all linear layers.", model_type)
    return "all-linear"


def _alpha(alpha: float) -> Any:
    """LoRA alpha as PEFT types it (an int) when it is whole; a float otherwise (PEFT takes it)."""
    return int(alpha) if float(alpha).is_integer() else alpha


def _load_model(cfg: TrainConfig, data: zoo.TaskData) -> tuple[Any, Any]:
    """(PEFT model, tokenizer) for the config's model and task."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        set_seed,
    )

    path = zoo.resolve_model(cfg.model)
    set_seed(cfg.seed)  # the classifier head and LoRA A are drawn from here
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if cfg.task == "classification":
            names = data.label_names or [str(i) for i in range(max(data.num_labels, 2))]
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
                ignore_mismatched_sizes=True,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
    except OSError as err:
        raise ValueError(
            f"Cannot load model {cfg.model!r} ({err}). Pass a built-in model "
            f"({', '.join(zoo.MODELS)}), a local folder, or a hub id that is in the local cache."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f"The tokenizer of {cfg.model!r} has no pad, eos or unk token.")
    tokenizer.padding_side = "right"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if cfg.task == "classification" else TaskType.CAUSAL_LM,
        r=cfg.rank,
        lora_alpha=_alpha(cfg.alpha),
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules or _default_targets(cfg, model),
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as err:
        raise ValueError(f"{err} (check --target-modules for {cfg.model!r})") from None
    return peft_model, tokenizer


# ---------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------


class RunRecorder:
    """What a run's callbacks see, kept in plain Python: eval rows, logged losses, divergence.

    One row per evaluation: step, eval metrics, the mean train loss since the previous eval and
    each role's current lr (lr/lora_A, lr/lora_B, ...). The first NaN/inf train loss stops
    training and sets `diverged`.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.losses: list[tuple[int, float]] = []  # (step, logged train loss)
        self.diverged = False
        self.diverged_at: int | None = None
        self._since_eval: list[float] = []

    def on_log(self, step: int, logs: Mapping[str, float], control: Any) -> None:
        """Keep a logged train loss; stop training on NaN/inf."""
        if "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.losses.append((step, loss))
        self._since_eval.append(loss)
        if not math.isfinite(loss) and not self.diverged:
            self.diverged, self.diverged_at = True, step
            control.should_training_stop = True
            control.should_evaluate = False
            log.warning("Training loss is %s at step %d: stopping.", loss, step)

    def on_evaluate(self, step: int, metrics: Mapping[str, float], optimizer: Any) -> None:
        """Add a row for this evaluation (replacing one already made at the same step)."""
        skip = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
        row: dict[str, Any] = {"step": step}
        row.update({k: float(v) for k, v in metrics.items() if k.startswith("eval_")})
        for key in skip:
            row.pop(key, None)
        losses, self._since_eval = self._since_eval, []
        row["train_loss"] = sum(losses) / len(losses) if losses else None
        if optimizer is not None:
            from loraplus.hf import role_learning_rates

            row.update(role_learning_rates(optimizer))
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1] = row
        else:
            self.rows.append(row)


@functools.cache
def _callback_classes() -> tuple[Any, Any]:
    """(recorder callback, progress bar callback), defined on first use: importing transformers'
    trainer takes seconds, and `loraplus --help` should not wait for it."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class RecorderCallback(TrainerCallback):
        """Forwards training logs and evaluations to a RunRecorder."""

        def __init__(self, recorder: RunRecorder) -> None:
            self.recorder = recorder

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            self.recorder.on_log(state.global_step, logs or {}, control)

        def on_evaluate(
            self,
            args: Any,
            state: Any,
            control: Any,
            metrics: dict[str, float] | None = None,
            optimizer: Any = None,
            **kwargs: Any,
        ) -> None:
            self.recorder.on_evaluate(state.global_step, metrics or {}, optimizer)

    class PostfixProgressCallback(ProgressCallback):
        """HF's progress bar with loss, lr and the last eval metric as postfix (no dicts)."""

        def __init__(self, metric: str) -> None:
            super().__init__()
            self.metric = metric
            self.postfix: dict[str, str] = {}

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or self.training_bar is None:
                return
            if "loss" in logs:
                self.postfix["loss"] = f"{logs['loss']:.4f}"
            if "learning_rate" in logs:
                self.postfix["lr"] = f"{logs['learning_rate']:.2e}"
            if self.metric in logs:
                self.postfix[self.metric.removeprefix("eval_")] = f"{logs[self.metric]:.4f}"
            self.training_bar.set_postfix(self.postfix, refresh=False)

    return RecorderCallback, PostfixProgressCallback


def _accuracy(prediction: Any) -> dict[str, float]:
    """Eval accuracy from argmax predictions (see _argmax)."""
    import numpy as np

    preds = prediction.predictions
    preds = preds[0] if isinstance(preds, tuple) else preds
    labels = np.asarray(prediction.label_ids)
    return {"accuracy": float((np.asarray(preds) == labels).mean())}


def _argmax(logits: Any, labels: Any) -> Any:
    """Keep only the predicted class of each eval example (not the logits)."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def _final(
    history: list[dict[str, Any]], metric: str, steps: int, seconds: float
) -> dict[str, Any]:
    """The last eval metrics, the best eval accuracy / loss, steps and seconds."""
    final: dict[str, Any] = {}
    if history:
        final.update({k: v for k, v in history[-1].items() if k.startswith("eval_")})
    for key, pick in (("eval_accuracy", max), ("eval_loss", min)):
        values = [r[key] for r in history if isinstance(r.get(key), float)]
        values = [v for v in values if math.isfinite(v)]
        if values:
            final[f"best_{key}"] = pick(values)
    final["metric"] = metric
    final["steps"] = steps
    final["seconds"] = round(seconds, 3)
    return final


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _report_callbacks(
    cfg: TrainConfig, output_dir: Path
) -> tuple[list[str], list[TrainerCallback]]:
    """HF report_to names, with TensorBoard writing to output_dir/tensorboard instead of runs/."""
    others = [r for r in cfg.report_to if r != "tensorboard"]
    callbacks: list[TrainerCallback] = []
    if "tensorboard" in cfg.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        callbacks.append(TensorBoardCallback(writer))
    return others, callbacks


def train(cfg: TrainConfig, *, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` with LoRA+; write metrics, curves and the adapter."""
    from loraplus.diagnostics import FeatureUpdateCallback
    from loraplus.hf import LoraPlusTrainer, LoraPlusTrainingArguments
    from loraplus.plots import plot_training_curves

    cfg = make_config(**cfg.to_dict())  # validated copy (a caller may have changed fields)
    output_dir = Path(cfg.output_dir).expanduser()
    data = zoo.load_data(
        cfg.data, task=cfg.task, seed=cfg.seed, max_train=cfg.max_train, max_eval=cfg.max_eval
    )
    model, tokenizer = _load_model(cfg, data)
    train_set = tokenize(data.train, tokenizer, cfg.task, cfg.max_length)
    eval_set = _by_length(tokenize(data.eval, tokenizer, cfg.task, cfg.max_length))
    classification = cfg.task == "classification"
    metric = "eval_accuracy" if classification else "eval_loss"
    if classification:
        from transformers import DataCollatorWithPadding

        collator: Any = DataCollatorWithPadding(tokenizer)
    else:
        collator = CausalLMCollator(int(tokenizer.pad_token_id))

    report_to, report_callbacks = _report_callbacks(cfg, output_dir)
    args = LoraPlusTrainingArguments(
        output_dir=str(output_dir),
        learning_rate=cfg.lr,
        loraplus_lr_ratio=cfg.ratio,
        loraplus_lr_embedding=cfg.lr_embedding,
        loraplus_lr_multipliers=cfg.lr_multipliers,
        lora_init=cfg.init,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(64, cfg.batch_size),
        gradient_accumulation_steps=cfg.grad_accum,
        optim=cfg.optimizer,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=True,
        logging_strategy="steps",
        logging_steps=min(_LOGGING_STEPS_MAX, cfg.eval_steps),
        logging_nan_inf_filter=False,  # NaN must reach the divergence check
        save_strategy="no",
        report_to=report_to or "none",
        disable_tqdm=not cfg.progress,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=not classification,
        dataloader_num_workers=0,
        dataloader_pin_memory=_has_cuda(),
    )
    history = RunRecorder()
    recorder_cls, progress_cls = _callback_classes()
    probe = FeatureUpdateCallback(cfg.probe_every) if cfg.probe_every > 0 else None
    trainer = LoraPlusTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=_accuracy if classification else None,
        preprocess_logits_for_metrics=_argmax if classification else None,
        callbacks=[
            recorder_cls(history),
            *report_callbacks,
            *([probe] if probe is not None else []),
            *(callbacks or []),
        ],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if cfg.progress:
        trainer.add_callback(progress_cls(metric))

    start = time.perf_counter()
    trainer.train()
    steps = trainer.state.global_step
    if not history.diverged and (not history.rows or history.rows[-1]["step"] != steps):
        trainer.evaluate()
    seconds = time.perf_counter() - start
    final = _final(history.rows, metric, steps, seconds)

    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "config": cfg.to_dict(),
        "history": history.rows,
        "final": final,
        "diverged": history.diverged,
        "diverged_at_step": history.diverged_at,
        "train_loss_log": [{"step": s, "loss": v} for s, v in history.losses],
        "feature_updates": probe.history if probe is not None else [],
        "param_groups": [
            {
                "role": g.get("role"),
                "lr": float(g.get("initial_lr", g["lr"])),
                "weight_decay": g.get("weight_decay", 0.0),
                "tensors": len(g["params"]),
                "parameters": sum(p.numel() for p in g["params"]),
            }
            for g in trainer.optimizer.param_groups
        ],
        "data": {
            "source": data.source,
            "split": data.split,
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "label_names": data.label_names,
        },
    }
    write_json(output_dir / "metrics.json", metrics)
    plot_training_curves(
        output_dir / "curves.png",
        {
            "train_steps": [s for s, _ in history.losses],
            "train_loss": [v for _, v in history.losses],
            "eval_steps": [r["step"] for r in history.rows],
            "eval_metric": [r.get(metric) for r in history.rows],
            "eval_loss": [r.get("eval_loss") for r in history.rows],
            "metric_name": metric,
            "title": f"{cfg.model} on {cfg.data}: lr {cfg.lr:g}, ratio {cfg.ratio:g}",
        },
    )
    if cfg.save_adapter:

        def save_adapter(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        atomic_dir(output_dir / "adapter", save_adapter)
    if cfg.merge:
        merged = model.merge_and_unload()

        def save_merged(folder: Path) -> None:
            merged.save_pretrained(folder)  # safetensors
            tokenizer.save_pretrained(folder)

        atomic_dir(output_dir / "merged", save_merged)
    return TrainResult(
        history=history.rows, final=final, output_dir=output_dir, diverged=history.diverged
    )


def _has_cuda() -> bool:
    """True when torch sees a CUDA device (pinned memory helps only then)."""
    import torch

    return bool(torch.cuda.is_available())
