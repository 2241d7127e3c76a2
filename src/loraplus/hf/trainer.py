"""LoraPlusMixin / LoraPlusTrainer: the Trainer builds its optimizer with create_optimizer."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import transformers
from torch import nn
from torch.optim import Optimizer
from transformers import TrainingArguments

from loraplus.init import init_lora_
from loraplus.optim import create_optimizer
from loraplus.settings import LoraPlusSettings

if TYPE_CHECKING:
    from transformers.trainer_callback import CallbackHandler
from loraplus.hf.arguments import MIXIN_SETTINGS, TRAINER_NAMES, settings_from_args
from loraplus.hf.callbacks import _log_callback_first
from loraplus.hf.deepspeed import check_deepspeed_config
from loraplus.hf.resume import (
    OPTIMIZER_FILE,
    _apply_new_hyperparameters,
    _base_lr,
    compare_param_groups,
    read_checkpoint_param_groups,
)

# get_optimizer_cls_and_kwargs keys that mean "this optimizer builds its own parameter groups".
_OWN_GROUP_KEYS = ("params", "model", "optimizer_dict")


def _build(
    args: TrainingArguments,
    model: nn.Module,
    settings: LoraPlusSettings,
    cls_and_kwargs: tuple[Any, dict[str, Any]],
) -> Optimizer:
    """The LoRA+ optimizer for `model` from the class and kwargs chosen for args.optim (`init`
    is the caller's to apply: the mixin does it once, when the model arrives)."""
    optimizer_cls, optimizer_kwargs = cls_and_kwargs
    kwargs = dict(optimizer_kwargs)
    own = [k for k in _OWN_GROUP_KEYS if k in kwargs]
    if own or not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise ValueError(
            f"optim={args.optim!r} builds its own parameter groups (GaLore, APOLLO, LOMO, "
            "layer-wise and factory optimizers such as Muon), which would drop LoRA+'s per-role "
            "learning rates. Use an optimizer with per-group lr: adamw_torch, adamw_bnb_8bit, "
            "paged_adamw_8bit, sgd, adafactor, ..."
        )
    kwargs.pop("lr", None)
    kwargs.pop("weight_decay", None)
    return create_optimizer(
        model,
        optimizer_cls,
        replace(settings, init=None),
        weight_decay=args.weight_decay,
        **kwargs,
    )


def loraplus_optimizer_for(trainer_or_args: Any, model: nn.Module) -> Optimizer:
    """The LoRA+ optimizer for `model` from a Trainer's or a TrainingArguments' settings.

    For `Trainer(..., optimizers=(loraplus_optimizer_for(args, model), None))`: args.optim,
    learning_rate, weight_decay and the loraplus_* fields (getattr defaults) are honoured, and
    `lora_init` is applied to `model` first. Build it after the model is on its device.
    """
    is_trainer = not isinstance(trainer_or_args, TrainingArguments) and hasattr(
        trainer_or_args, "args"
    )
    args = trainer_or_args.args if is_trainer else trainer_or_args
    check_deepspeed_config(trainer_or_args)
    if is_trainer and isinstance(trainer_or_args, LoraPlusMixin):
        settings = trainer_or_args.loraplus_settings()
    else:
        settings = settings_from_args(args)
    if settings.init is not None:
        init_lora_(model, settings.init)
    getter: Any = (
        getattr(trainer_or_args, "get_optimizer_cls_and_kwargs", None) if is_trainer else None
    )
    getter = getter or transformers.Trainer.get_optimizer_cls_and_kwargs
    return _build(args, model, settings, getter(args, model))


class LoraPlusMixin:
    """Put in front of any HF-style Trainer (`class MySFT(LoraPlusMixin, SFTTrainer)`) for LoRA+.

    Settings come from the args' loraplus_* fields (plain TrainingArguments / SFTConfig: defaults)
    or from constructor kwargs, which win. On resume from a checkpoint whose learning rates or
    weight decays differ from this run's (say a new ratio), this run's values are applied to the
    optimizer and scheduler, the schedule position is kept, and a warning names the changes:
    the values you configured are the ones that train, unlike the plain Trainer, which silently
    restores the old ones. Changed groups (other trainable tensors) raise instead.
    """

    if TYPE_CHECKING:
        args: TrainingArguments
        model: Any
        optimizer: Any
        lr_scheduler: Any
        optimizer_cls_and_kwargs: tuple[Any, dict[str, Any]] | None
        callback_handler: CallbackHandler

        @staticmethod
        def get_optimizer_cls_and_kwargs(
            args: TrainingArguments, model: Any = None
        ) -> tuple[Any, Any]: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Take the LoRA+ keywords (loraplus_lr_ratio=..., lora_init=..., every name in
        TRAINER_NAMES but learning_rate), check them and DeepSpeed early, then build the
        wrapped Trainer."""
        self._loraplus_inited: set[int] = set()
        self._loraplus_overrides: dict[str, Any] = {
            name: kwargs.pop(TRAINER_NAMES[name])
            for name in MIXIN_SETTINGS
            if TRAINER_NAMES[name] in kwargs
        }
        early_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if early_args is not None:
            settings_from_args(early_args, **self._loraplus_overrides)
            check_deepspeed_config(early_args)
        try:
            super().__init__(*args, **kwargs)
        except TypeError as err:
            if "loraplus" in str(err) or "lora_init" in str(err):
                raise TypeError(
                    f"{err}. This trainer converts its args to its own config class, which has no "
                    "loraplus_* fields: pass its own config (e.g. SFTConfig) and give the LoRA+ "
                    "settings as trainer kwargs (loraplus_lr_ratio=..., lora_init=...), or use "
                    "a config class that inherits from both, e.g. "
                    "`@dataclass class Cfg(LoraPlusTrainingArguments, SFTConfig): pass`."
                ) from err
            raise
        check_deepspeed_config(self)
        self.loraplus_settings()
        _log_callback_first(self.callback_handler)
        if getattr(self, "model", None) is not None:
            self._loraplus_init(self.model)

    def loraplus_settings(self) -> LoraPlusSettings:
        """This run's LoRA+ settings: args.learning_rate and the args' loraplus_* fields,
        overridden by the constructor's keywords."""
        return settings_from_args(self.args, **self._loraplus_overrides)

    def _loraplus_init(self, model: nn.Module) -> None:
        scheme = self.loraplus_settings().init
        if scheme is not None and id(model) not in self._loraplus_inited:
            init_lora_(model, scheme)
            self._loraplus_inited.add(id(model))

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """The model from `model_init`, with `lora_init` applied."""
        model: nn.Module = super().call_model_init(trial)  # type: ignore[misc]
        self._loraplus_init(model)
        return model

    def create_optimizer(self, model: nn.Module | None = None) -> Optimizer:
        """Build the LoRA+ optimizer from args.optim (or optimizer_cls_and_kwargs), once."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if getattr(self, "optimizer_cls_and_kwargs", None) is not None:
                assert self.optimizer_cls_and_kwargs is not None
                cls_and_kwargs = self.optimizer_cls_and_kwargs
            else:
                cls_and_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = _build(self.args, opt_model, self.loraplus_settings(), cls_and_kwargs)
        optimizer: Optimizer = self.optimizer
        return optimizer

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Load the checkpoint's optimizer state, keeping this run's lrs and weight decays."""
        if checkpoint is None or self.optimizer is None:
            super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
            return
        built = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        for group in built:
            group["initial_lr"] = _base_lr(group)
        try:
            super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        except ValueError:  # torch's group-size mismatch: say which groups differ
            if (Path(checkpoint) / OPTIMIZER_FILE).is_file():
                compare_param_groups(read_checkpoint_param_groups(checkpoint), built)
            raise
        changes = compare_param_groups(self.optimizer.param_groups, built)
        if changes:
            _apply_new_hyperparameters(self.optimizer, self.lr_scheduler, built)
            warnings.warn(
                f"Resuming from {checkpoint}, whose optimizer was saved with other learning "
                f"rates / weight decays ({'; '.join(changes)}). Training continues with this "
                "run's values (schedule position kept). To continue with the old ones, resume "
                "with the same learning_rate, loraplus_lr_ratio and weight_decay.",
                UserWarning,
                stacklevel=2,
            )


class LoraPlusTrainer(LoraPlusMixin, transformers.Trainer):
    """transformers.Trainer that trains LoRA adapters with LoRA+ (see LoraPlusMixin)."""
