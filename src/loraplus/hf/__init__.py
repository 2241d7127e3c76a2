"""LoRA+ for the Hugging Face Trainer and TRL: arguments, a trainer mixin, callbacks.

`LoraPlusMixin` builds the optimizer through `loraplus.create_optimizer` from the user's
`args.optim`, and refuses two silent ways of losing LoRA+: a DeepSpeed config that brings its own
optimizer or lr schedule, and a resume that would restore the checkpoint's old learning rates.
"""

from typing import Any

from loraplus.hf.arguments import (
    TRAINER_NAMES,
    LoraPlusTrainingArguments,
    settings_from_args,
    trainer_arguments,
)
from loraplus.hf.callbacks import (
    FeatureUpdateCallback,
    LoraPlusLogCallback,
    role_learning_rates,
)
from loraplus.hf.deepspeed import check_deepspeed_config, deepspeed_config
from loraplus.hf.resume import compare_param_groups, read_checkpoint_param_groups
from loraplus.hf.trainer import LoraPlusMixin, LoraPlusTrainer, loraplus_optimizer_for

__all__ = [
    "TRAINER_NAMES",
    "FeatureUpdateCallback",
    "LoraPlusLogCallback",
    "LoraPlusMixin",
    "LoraPlusTrainer",
    "LoraPlusTrainingArguments",
    "check_deepspeed_config",
    "compare_param_groups",
    "deepspeed_config",
    "loraplus_optimizer_for",
    "read_checkpoint_param_groups",
    "role_learning_rates",
    "settings_from_args",
    "trainer_arguments",
]


def __getattr__(name: str) -> Any:
    if name == "LoraPlusConfig":  # the Trainer's own copy of the settings, until issue 18
        raise AttributeError(
            "loraplus.hf.LoraPlusConfig is gone: the LoRA+ settings are loraplus.LoraPlusSettings "
            "(lora_init is its init, learning_rate its lr); settings_from_args(args) reads them "
            "from TrainingArguments."
        )
    raise AttributeError(f"module 'loraplus.hf' has no attribute {name!r}")
