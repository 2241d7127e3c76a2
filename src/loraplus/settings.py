"""LoraPlusSettings: the LoRA+ settings of a run, declared and validated here and nowhere else.

Every consumer takes them from this one dataclass: `param_groups` / `create_optimizer` (the object,
or its fields as keywords), the Trainer's arguments and mixin (`loraplus_*` names, hf/arguments.py)
and `loraplus train`'s TrainConfig (its fields made with `settings_field`, so defaults and help
come from here). Data flows one way: settings -> groups -> optimizer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from loraplus.init import SCHEMES
from loraplus.roles import Role, as_role


class SettingsError(ValueError):
    """A bad LoRA+ setting; `fields` names the settings fields it concerns, so a consumer whose
    names differ (the Trainer's `loraplus_lr_ratio`) can name its own."""

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = fields


def as_float(value: Any, name: str, *, positive: bool = True, allow_zero: bool = False) -> float:
    """`value` as a finite float; numbers written as strings ("1e-6") are accepted."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the boolean {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number, got {value!r} ({type(value).__name__}). "
            "Write it as 2e-4 or '2e-4'."
        ) from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if positive and (number < 0 or (number == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return number


def as_ratio(value: Any, name: str = "ratio") -> float | str:
    """lr_B / lr_A as a float > 0, or "auto" (loraplus.autoratio sets it per layer)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return as_float(value, name)


def absolute_roles(lr_roles: Mapping[Role | str, float] | None) -> dict[Role, float]:
    """lr_roles checked: {Role: absolute lr >= 0}."""
    return {
        as_role(k): as_float(v, f"lr_roles[{k!r}]", allow_zero=True)
        for k, v in (lr_roles or {}).items()
    }


def check_lr_roles(
    lr_multipliers: Mapping[Role | str, float] | None,
    lr_roles: Mapping[Role | str, float] | None,
    width_aware: bool = False,
) -> dict[Role, float]:
    """lr_roles as {Role: lr}, refused where a role also has a multiplier, or where it sets
    lora_A's lr that width_aware sets per layer."""
    absolute = absolute_roles(lr_roles)
    both = sorted(r.value for r in absolute if r in {as_role(k) for k in (lr_multipliers or {})})
    if both:
        raise ValueError(
            f"{', '.join(both)} is set in both lr_multipliers and lr_roles: give each role "
            "either a multiplier of lr or an absolute lr, not both."
        )
    if width_aware and Role.LORA_A in absolute:
        raise ValueError("width_aware sets lora_A's lr per layer: drop lora_A from lr_roles.")
    return absolute


@dataclass(frozen=True)
class AutoRatioConfig:
    """ratio="auto": the controller's settings; the defaults are the ones the tests and
    benchmarks use (loraplus.autoratio runs it)."""

    start: float = 16.0  # the paper's default ratio, where every layer begins
    low: float = 1.0  # ratio 1 is plain LoRA: never train B slower than A
    high: float = 1024.0  # 2^10
    every: int = 10  # measure and update every `every` optimizer steps
    target: float = 0.0  # wanted log2(δ²/δ¹) of the isotropic proxy; 0 = balanced
    gain: float = 0.5  # octaves of ratio per octave of (EMA balance - target)
    max_step: float = 0.25  # at most this many octaves of ratio per update
    ema: float = 0.5  # weight of the previous EMA value
    signal: str = "isotropic"  # or "inputs": δ¹, δ² on the step's real inputs (forward hooks)
    max_tokens: int = 512  # "inputs": tokens kept per layer

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.start <= self.high:
            raise ValueError(
                f"auto ratio needs 0 < low <= start <= high, got low={self.low}, "
                f"start={self.start}, high={self.high}."
            )
        if self.signal not in ("isotropic", "inputs"):
            raise ValueError(
                f"auto ratio signal must be 'isotropic' or 'inputs', got {self.signal!r}."
            )
        if self.every < 1:
            raise ValueError(f"auto ratio `every` must be >= 1 step, got {self.every}.")
        if not 0 <= self.ema < 1 or self.gain <= 0 or self.max_step <= 0:
            raise ValueError(
                f"auto ratio needs 0 <= ema < 1, gain > 0 and max_step > 0, got ema={self.ema}, "
                f"gain={self.gain}, max_step={self.max_step}."
            )


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class LoraPlusSettings:
    """The LoRA+ settings: lr_A, the ratio lr_B / lr_A (or "auto"), and what overrides a role's lr.

    Validated once, on construction; numbers written as strings are accepted and role names
    become their values ("lora_B"). With ratio="auto", auto_ratio configures the controller
    (None: AutoRatioConfig's defaults).
    """

    lr: float = field(metadata=_help("learning rate of LoRA A (lr_A)"))
    ratio: float | str = field(
        default=16.0,
        metadata=_help(
            "lr_B / lr_A (also of vectors, embedding adapters and a new head); 1 = standard "
            "LoRA; auto = set per layer online (experimental)"
        ),
    )
    lr_embedding: float | None = field(
        default=None, metadata=_help("lr of embedding adapters (default: ratio * lr)")
    )
    lr_multipliers: Mapping[str, float] | None = field(
        default=None,
        metadata=_help("per-role lr = multiplier * lr, e.g. other=16 vector=1 (README role table)"),
    )
    lr_roles: Mapping[str, float] | None = field(
        default=None,
        metadata=_help("per-role absolute lr, e.g. other=1e-3 (a new head's own lr, any ratio)"),
    )
    width_aware: bool = field(
        default=False,
        metadata=_help("lr_A of each layer = lr * n_ref / its fan-in (theory: lr_A ~ 1/n)"),
    )
    n_ref: float | None = field(
        default=None, metadata=_help("width-aware reference fan-in (default: the median)")
    )
    init: str | None = field(
        default=None,
        metadata=_help("re-initialize the adapters first: init1 (B = 0) or init2 (A = 0)"),
    )
    auto_ratio: AutoRatioConfig | None = field(
        default=None,
        metadata=_help("ratio auto: the controller's settings (AutoRatioConfig)"),
    )

    def __post_init__(self) -> None:
        """Check every field and normalize it (floats, role values); raise SettingsError."""
        with _fields("lr"):
            self._set("lr", as_float(self.lr, "lr"))
        with _fields("ratio"):
            self._set("ratio", as_ratio(self.ratio))
        if self.lr_embedding is not None:
            with _fields("lr_embedding"):
                self._set("lr_embedding", as_float(self.lr_embedding, "lr_embedding"))
        with _fields("lr_multipliers"):
            self._set("lr_multipliers", _role_numbers(self.lr_multipliers, "lr_multipliers"))
        with _fields("lr_roles"):
            self._set("lr_roles", _role_numbers(self.lr_roles, "lr_roles"))
        with _fields("lr_multipliers", "lr_roles", "width_aware"):
            check_lr_roles(self.lr_multipliers, self.lr_roles, self.width_aware)
        with _fields("n_ref", "width_aware"):
            if self.n_ref is not None and not self.width_aware:
                raise ValueError("n_ref only applies with width_aware=True: pass both, or neither.")
            if self.n_ref is not None:
                self._set("n_ref", as_float(self.n_ref, "n_ref"))
        with _fields("init"):
            if self.init is not None and self.init not in SCHEMES:
                raise ValueError(
                    f"init={self.init!r}: use 'init1' (B = 0, PEFT's default), "
                    "'init2' (A = 0) or None (keep the adapter as built)."
                )
        self._check_auto()

    def _check_auto(self) -> None:
        """ratio="auto" sets lr_B per layer: width_aware, n_ref and a lora_B lr conflict."""
        if self.ratio != "auto":
            if self.auto_ratio is not None:
                raise SettingsError(
                    "auto_ratio=... configures ratio='auto'; pass ratio='auto' with it.",
                    ("auto_ratio", "ratio"),
                )
            return
        if self.width_aware or self.n_ref is not None:
            raise SettingsError(
                "ratio='auto' sets lr_B per layer; use it without width_aware/n_ref.",
                ("ratio", "width_aware", "n_ref"),
            )
        for name in ("lr_multipliers", "lr_roles"):
            if Role.LORA_B.value in (getattr(self, name) or {}):
                raise SettingsError(
                    f"ratio='auto' sets lora_B's learning rate itself; drop lora_B from {name} "
                    "or pass a number as ratio.",
                    ("ratio", name),
                )
        if self.auto_ratio is not None and not isinstance(self.auto_ratio, AutoRatioConfig):
            raise SettingsError(
                f"auto_ratio must be an AutoRatioConfig, got {self.auto_ratio!r}.",
                ("auto_ratio",),
            )

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def auto_config(self) -> AutoRatioConfig | None:
        """ratio="auto": its controller's settings (auto_ratio, else the defaults); else None."""
        if self.ratio != "auto":
            return None
        return self.auto_ratio or AutoRatioConfig()

    @property
    def start_ratio(self) -> float:
        """The ratio the param groups are built at: ratio, or auto's starting ratio."""
        auto = self.auto_config
        if auto is not None:
            return auto.start
        assert isinstance(self.ratio, float)
        return self.ratio


@contextmanager
def _fields(*names: str) -> Iterator[None]:
    """A ValueError raised inside becomes a SettingsError naming `names`."""
    try:
        yield
    except SettingsError:
        raise
    except ValueError as err:
        raise SettingsError(str(err), names) from None


def _role_numbers(value: Any, name: str) -> dict[str, float] | None:
    """{role value: number >= 0} from a mapping keyed by Role or role name (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        example = "{'vector': 1.0}" if name == "lr_multipliers" else "{'other': 1e-3}"
        raise ValueError(f"{name} must be a dict such as {example}, got {value!r}.")
    return {
        as_role(k).value: as_float(v, f"{name}[{k!r}]", allow_zero=True) for k, v in value.items()
    }


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LoraPlusSettings))


def as_settings(settings: LoraPlusSettings | None = None, **fields: Any) -> LoraPlusSettings:
    """The settings object from an object, its fields as keywords, or both (keywords win)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"Unknown LoRA+ setting(s) {', '.join(unknown)}: use {', '.join(FIELDS)}.")
    if settings is None:
        if "lr" not in fields:
            raise TypeError("LoRA+ needs lr=... (lr_A), or settings=LoraPlusSettings(lr=...).")
        return LoraPlusSettings(**fields)
    if not isinstance(settings, LoraPlusSettings):
        raise TypeError(f"settings must be a LoraPlusSettings, got {type(settings).__name__}.")
    return dataclasses.replace(settings, **fields) if fields else settings


def split_settings(keywords: dict[str, Any]) -> dict[str, Any]:
    """Remove the LoRA+ settings' fields from `keywords` (the rest are an optimizer's) and
    return them."""
    return {name: keywords.pop(name) for name in FIELDS if name in keywords}


def settings_field(name: str, **changes: Any) -> Any:
    """A consumer's dataclass field for setting `name`, with its default and help from
    LoraPlusSettings; `changes` (default=..., help=..., argtype=...) are the consumer's own."""
    source = next(f for f in dataclasses.fields(LoraPlusSettings) if f.name == name)
    default = changes.pop("default", source.default)
    return field(default=default, metadata={**source.metadata, **changes})
