"""LoRA+ for the Hugging Face Trainer and TRL: arguments, a trainer mixin, callbacks.

`LoraPlusMixin` builds the optimizer through `loraplus.create_optimizer` from the user's
`args.optim`, and refuses two silent ways of losing LoRA+: a DeepSpeed config that brings its own
optimizer or lr schedule, and a resume that would restore the checkpoint's old learning rates.
"""

from loraplus.hf.arguments import LoraPlusConfig, LoraPlusTrainingArguments
from loraplus.hf.callbacks import (
    FeatureUpdateCallback,
    LoraPlusLogCallback,
    role_learning_rates,
)
from loraplus.hf.deepspeed import check_deepspeed_config, deepspeed_config
from loraplus.hf.resume import compare_param_groups, read_checkpoint_param_groups
from loraplus.hf.trainer import LoraPlusMixin, LoraPlusTrainer, loraplus_optimizer_for

__all__ = [
    "FeatureUpdateCallback",
    "LoraPlusConfig",
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
]
