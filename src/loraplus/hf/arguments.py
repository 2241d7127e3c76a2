"""LoRA+ settings for the Hugging Face Trainer: LoraPlusConfig and LoraPlusTrainingArguments."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transformers import TrainingArguments

from loraplus.groups import as_float, as_ratio, check_lr_roles
from loraplus.init import SCHEMES
from loraplus.roles import as_role

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class LoraPlusConfig:
    """The LoRA+ settings of one run, validated: ratio, embedding lr, init scheme, multipliers."""

    ratio: float | str = 16.0
    lr_embedding: float | None = None
    lora_init: str | None = None
    lr_multipliers: dict[str, float] | None = None
    width_aware: bool = False
    n_ref: float | None = None
    lr_roles: dict[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", as_ratio(self.ratio, "loraplus_lr_ratio"))
        if self.lr_embedding is not None:
            emb = as_float(self.lr_embedding, "loraplus_lr_embedding")
            object.__setattr__(self, "lr_embedding", emb)
        if self.lora_init is not None and self.lora_init not in SCHEMES:
            raise ValueError(
                f"lora_init={self.lora_init!r}: use 'init1' (B = 0, PEFT's default), "
                "'init2' (A = 0) or None (keep the adapter as built)."
            )
        if self.lr_multipliers is not None:
            if not isinstance(self.lr_multipliers, Mapping):
                raise ValueError(
                    "loraplus_lr_multipliers must be a dict such as {'vector': 1.0}, got "
                    f"{self.lr_multipliers!r}."
                )
            mults = {
                as_role(k).value: as_float(v, f"loraplus_lr_multipliers[{k!r}]", allow_zero=True)
                for k, v in self.lr_multipliers.items()
            }
            object.__setattr__(self, "lr_multipliers", mults)
        if self.lr_roles is not None:
            if not isinstance(self.lr_roles, Mapping):
                raise ValueError(
                    "loraplus_lr_roles must be a dict such as {'other': 1e-3}, got "
                    f"{self.lr_roles!r}."
                )
            checked = check_lr_roles(self.lr_multipliers, self.lr_roles, self.width_aware)
            object.__setattr__(self, "lr_roles", {r.value: lr for r, lr in checked.items()})

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> LoraPlusConfig:
        """Read the loraplus_* fields of any TrainingArguments (defaults if absent); kwargs win."""
        values: dict[str, Any] = {
            "ratio": getattr(args, "loraplus_lr_ratio", 16.0),
            "lr_embedding": getattr(args, "loraplus_lr_embedding", None),
            "lora_init": getattr(args, "lora_init", None),
            "lr_multipliers": getattr(args, "loraplus_lr_multipliers", None),
            "width_aware": getattr(args, "loraplus_width_aware", False),
            "n_ref": getattr(args, "loraplus_n_ref", None),
            "lr_roles": getattr(args, "loraplus_lr_roles", None),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class LoraPlusTrainingArguments(TrainingArguments):
    """TrainingArguments plus the LoRA+ settings (lr_B = loraplus_lr_ratio · learning_rate)."""

    loraplus_lr_ratio: float | str = field(
        default=16.0,
        metadata={
            "help": "lr of LoRA B (and vectors, embeddings) / lr of LoRA A; 'auto' sets it "
            "per layer online (loraplus.autoratio, experimental)."
        },
    )
    loraplus_lr_embedding: float | None = field(
        default=None, metadata={"help": "lr of embedding adapters (default ratio · lr)."}
    )
    lora_init: str | None = field(
        default=None,
        metadata={"help": "Re-initialize adapters: 'init1' (B = 0) or 'init2' (A = 0)."},
    )
    loraplus_lr_multipliers: dict[str, float] | None = field(
        default=None, metadata={"help": "Per-role lr multipliers, e.g. {'vector': 1.0}."}
    )
    loraplus_lr_roles: dict[str, float] | None = field(
        default=None,
        metadata={"help": "Absolute per-role lrs, e.g. {'other': 1e-3} (a new head's own lr)."},
    )
    loraplus_width_aware: bool = field(
        default=False,
        metadata={"help": "lr_A of each layer = learning_rate · n_ref / its fan-in (lr_A ~ 1/n)."},
    )
    loraplus_n_ref: float | None = field(
        default=None, metadata={"help": "Width-aware reference fan-in (default: the median)."}
    )

    def __post_init__(self) -> None:
        """Validate the LoRA+ fields where they are first seen; JSON strings become dicts."""
        super().__post_init__()
        if isinstance(self.loraplus_lr_multipliers, str):
            self.loraplus_lr_multipliers = json.loads(self.loraplus_lr_multipliers)
        if isinstance(self.loraplus_lr_roles, str):
            self.loraplus_lr_roles = json.loads(self.loraplus_lr_roles)
        cfg = LoraPlusConfig.from_args(self)
        self.loraplus_lr_ratio = cfg.ratio
        self.loraplus_lr_embedding = cfg.lr_embedding
        self.loraplus_lr_multipliers = cfg.lr_multipliers
        self.loraplus_lr_roles = cfg.lr_roles
