"""TrainConfig: every setting of one run (each a `loraplus train` flag and config-file key)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus import zoo
from loraplus.init import SCHEMES
from loraplus.roles import as_role

if TYPE_CHECKING:
    pass


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
