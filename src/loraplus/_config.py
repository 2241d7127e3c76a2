"""One dataclass-driven parser for every command and config file (transformers' HfArgumentParser).

A config dataclass's fields are its flags (`num_lrs` -> `--num-lrs`) and its YAML/TOML keys. File
values go through the same argparse types as flags, so "1e-4" in a file and `--lr 1e-4` on the
command line become the same float, and a bad value is refused naming the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from transformers import HfArgumentParser


class DataclassParser(HfArgumentParser):
    """HfArgumentParser that can leave unpassed flags out (suppress) and raises on bad input.

    A usage error raises ValueError (one line, with the --help to read) instead of printing the
    whole usage and exiting, so the CLI reports it like any other bad input. --help names each
    flag's default, lists the dashed spelling first (--max-steps, as README writes it), and says
    what each --no-x does; `hide` keeps fields out of --help (a command that sets them itself).
    """

    def __init__(
        self,
        dataclass_types: Any = None,
        *,
        suppress: bool = False,
        hide: Sequence[str] = (),
        **kwargs: Any,
    ):
        self._suppress = suppress
        self._hide = set(hide)
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)  # defaults: _describe
        super().__init__(dataclass_types, **kwargs)
        for cls in self.dataclass_types:  # --no-x for every bool, not only those defaulting to True
            for f in dataclasses.fields(cls):
                if f.init and f.type in (bool, "bool") and f.default is False:
                    flag = f"--no-{f.name.replace('_', '-')}"
                    self.add_argument(flag, action="store_false", dest=f.name)
        self._suppress = False  # flags added later keep their own defaults

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("cli", True) is False:  # a field that only Python callers set
            return None
        if "argtype" in kwargs:  # a field's metadata can name its own parser (e.g. "auto" or 16)
            kwargs["type"] = kwargs.pop("argtype")
        args = tuple(sorted(args, key=lambda flag: "_" in flag))  # --max-steps, then --max_steps
        _describe(args, kwargs)
        if kwargs.get("dest", _dest(args)) in self._hide:
            kwargs["help"] = argparse.SUPPRESS
        if self._suppress:
            kwargs["default"] = argparse.SUPPRESS
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"(--[\w-]+)/--\w+", r"\1", message)  # --max-steps, not also --max_steps
        raise ValueError(f"{message} (see {self.prog} --help)")


def _dest(flags: Sequence[str]) -> str:
    """argparse's destination of a flag: --max-steps -> max_steps."""
    long = next((f for f in flags if f.startswith("--")), flags[0] if flags else "")
    return long.lstrip("-").replace("-", "_")


def _shown(value: Any) -> str:
    """A default as --help shows it: 0.0002, 16, true, tensorboard."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _describe(flags: Sequence[str], kwargs: dict[str, Any]) -> None:
    """Help text that says what a flag does by default: "(default: 16)"; a --no-x flag says it
    turns --x off (HfArgumentParser would give it --x's own help)."""
    help_text = kwargs.get("help")
    if help_text == argparse.SUPPRESS or not flags or not flags[0].startswith("--"):
        return
    if kwargs.get("action") == "store_false":
        on = "--" + str(kwargs.get("dest", _dest(flags))).replace("_", "-")
        kwargs["help"] = f"turn {on} off"
        return
    if kwargs.get("action") in ("store_true", "version", "help"):
        return
    if kwargs.get("nargs") == "?" and kwargs.get("const") is True:  # a bool field: --x [BOOL]
        kwargs.setdefault("metavar", "true|false")
    default = kwargs.get("default")
    if help_text is None or "default" in help_text or default in (None, argparse.SUPPRESS, []):
        return
    kwargs["help"] = f"{help_text} (default: {_shown(default)})"


def field_names(cls: Any) -> list[str]:
    """The init fields of a config dataclass."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def passed(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The fields of `cls` that the user passed (parsed by a DataclassParser with suppress)."""
    names = set(field_names(cls))
    return {k: v for k, v in vars(args).items() if k in names}


def _argv(key: str, value: Any) -> list[str]:
    flag = "--" + key
    if isinstance(value, bool):
        return [flag, str(value).lower()]
    if isinstance(value, Mapping):
        return [flag, *(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, (list, tuple)):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


# Keys of LLaMA-Factory and axolotl configs -> the key that means (about) the same here. They are
# refused, never mapped: the meanings differ (LLaMA-Factory's loraplus_lr_embedding default is
# 1e-6, ours ratio * lr; cutoff_len counts prompt + response; ...), so the user decides.
FOREIGN_KEYS = {
    "loraplus_lr_ratio": "ratio",
    "loraplus_lr_embedding": "lr_embedding",
    "lora_rank": "rank",
    "lora_r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target": "target_modules",
    "lora_target_modules": "target_modules",
    "cutoff_len": "max_length",
    "sequence_len": "max_length",
    "max_seq_length": "max_length",
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "lr_scheduler_type": "scheduler",
    "lr_scheduler": "scheduler",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "sample_packing": "packing",
    "train_on_inputs": "train_on_prompt",
    "template": "chat_template",
    "optim": "optimizer",
    "model_name_or_path": "model",
    "base_model": "model",
    "dataset": "data",
    "datasets": "data",
    "eval_dataset": "eval_data",
    "max_samples": "max_train",
    "dataloader_num_workers": "dataloader_workers",
    "resume_from_checkpoint": "resume",
    "torch_dtype": "dtype",
    "quantization_bit": "load_in_4bit or load_in_8bit",
    "lora_init_weights": "init",
}


def _unknown_key(key: str, valid: Sequence[str]) -> str:
    """An unknown key, with the key to use here when another tool's config uses it."""
    ours = FOREIGN_KEYS.get(key)
    if ours is None or not all(part in valid for part in ours.split(" or ")):
        return key
    return f"{key}: use {ours}"


def parse_settings(cls: Any, values: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """`values` (from a file or keyword arguments) typed exactly as the flags of `cls` type them.

    An unknown key is refused; one that LLaMA-Factory or axolotl uses names the key to use here.
    """
    where = f" in {source}" if source else ""
    valid = field_names(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        named = "; ".join(_unknown_key(k, valid) for k in unknown)
        raise ValueError(f"Unknown setting(s){where}: {named}. Valid: {', '.join(valid)}.")
    parser = DataclassParser(cls, suppress=True)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None and type(None) not in typing.get_args(hints[key]):
            raise ValueError(f"Bad value for {key}{where}: it needs a value (got None).")
        if value is None or (isinstance(value, (list, tuple, Mapping)) and not value):
            out[key] = value  # nothing to convert; the dataclass checks it
            continue
        try:
            out.update(vars(parser.parse_args(_argv(key, value))))
        except ValueError as err:
            text = re.sub(r"^argument [^:]*: | \(see .* --help\)$", "", str(err))
            raise ValueError(f"Bad value for {key}{where}: {text} (got {value!r}).") from None
    return out


def read_settings_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a .yaml/.yml or .toml file, keys with '-' read as '_'."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    text = file.read_text(encoding="utf-8")
    suffix = file.suffix.lower()
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


def build(cls: Any, path: str | os.PathLike[str] | None = None, **overrides: Any) -> Any:
    """An instance of `cls` from an optional YAML/TOML file, then keyword overrides."""
    values = {}
    if path is not None:
        values = parse_settings(cls, read_settings_file(path), str(path))
    keyed = {k.replace("-", "_"): v for k, v in overrides.items()}
    flags = parse_settings(cls, keyed)
    from_file = [k for k in values if k not in flags]
    values.update(flags)
    try:
        return cls(**values)
    except ValueError as err:  # a dataclass check: name the file and key the value came from
        key = next((k for k in from_file if re.search(rf"\b{k}\b", str(err))), None)
        if key is None:
            raise
        raise ValueError(f"{path}, key {key}: {err}") from None


def as_pairs(items: Sequence[str] | None, name: str) -> dict[str, float]:
    """["other=16", "vector=1"] (or "other=16,vector=1") as {"other": 16.0, "vector": 1.0}."""
    from loraplus.groups import as_float

    pairs: dict[str, float] = {}
    for item in (p for text in items or [] for p in str(text).replace(",", " ").split()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{name} takes ROLE=NUMBER pairs (e.g. other=16), got {item!r}.")
        pairs[key] = as_float(value, f"{name}[{key}]", allow_zero=True)
    return pairs
