"""The LoRA+ settings in the Trainer's words: LoraPlusTrainingArguments and settings_from_args.

The settings are declared once, in loraplus.settings.LoraPlusSettings; here each gets its Trainer
name (TRAINER_NAMES): an args field and a LoraPlusMixin keyword `loraplus_*`, with the default and
help of the settings field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from loraplus.settings import LoraPlusSettings, SettingsError, settings_field

# Each LoRA+ setting's name in the Trainer world. lr is TrainingArguments' own learning_rate;
# auto_ratio (an AutoRatioConfig, no flag form) is a LoraPlusMixin keyword only.
TRAINER_NAMES: dict[str, str] = {
    "lr": "learning_rate",
    "ratio": "loraplus_lr_ratio",
    "lr_embedding": "loraplus_lr_embedding",
    "lr_multipliers": "loraplus_lr_multipliers",
    "lr_roles": "loraplus_lr_roles",
    "width_aware": "loraplus_width_aware",
    "n_ref": "loraplus_n_ref",
    "init": "lora_init",
    "auto_ratio": "loraplus_auto_ratio",
}
# The settings that LoraPlusTrainingArguments declares as fields (flags), and the mixin's keywords.
ARGUMENT_SETTINGS = tuple(n for n in TRAINER_NAMES if n not in ("lr", "auto_ratio"))
MIXIN_SETTINGS = tuple(n for n in TRAINER_NAMES if n != "lr")


def settings_from_args(args: Any, **overrides: Any) -> LoraPlusSettings:
    """The LoRA+ settings of any TrainingArguments: learning_rate and the loraplus_* fields it
    has (the settings' defaults for the others), then `overrides` (settings names) on top.
    A bad value is refused naming the Trainer's field."""
    values = {n: getattr(args, t) for n, t in TRAINER_NAMES.items() if hasattr(args, t)}
    values.update(overrides)
    try:
        return LoraPlusSettings(**values)
    except SettingsError as err:
        names = ", ".join(TRAINER_NAMES[f] for f in err.fields)
        raise SettingsError(f"{names}: {err}", err.fields) from None


def trainer_arguments(settings: LoraPlusSettings) -> dict[str, Any]:
    """LoraPlusTrainingArguments keywords (learning_rate, loraplus_*) for `settings`."""
    names = ("lr", *ARGUMENT_SETTINGS)
    return {TRAINER_NAMES[n]: getattr(settings, n) for n in names}


@dataclass
class LoraPlusTrainingArguments(TrainingArguments):
    """TrainingArguments plus the LoRA+ settings (lr_B = loraplus_lr_ratio · learning_rate)."""

    loraplus_lr_ratio: float | str = settings_field("ratio")
    loraplus_lr_embedding: float | None = settings_field("lr_embedding")
    lora_init: str | None = settings_field("init")
    loraplus_lr_multipliers: dict[str, float] | str | None = settings_field("lr_multipliers")
    loraplus_lr_roles: dict[str, float] | str | None = settings_field("lr_roles")
    loraplus_width_aware: bool = settings_field("width_aware")
    loraplus_n_ref: float | None = settings_field("n_ref")

    def __post_init__(self) -> None:
        """Validate the LoRA+ fields where they are first seen; JSON strings become dicts."""
        super().__post_init__()
        if isinstance(self.loraplus_lr_multipliers, str):
            self.loraplus_lr_multipliers = json.loads(self.loraplus_lr_multipliers)
        if isinstance(self.loraplus_lr_roles, str):
            self.loraplus_lr_roles = json.loads(self.loraplus_lr_roles)
        settings = settings_from_args(self)
        for name in ARGUMENT_SETTINGS:  # normalized: floats, role values
            setattr(self, TRAINER_NAMES[name], getattr(settings, name))
