"""LoRA+ for the Hugging Face Trainer and TRL: arguments, a trainer mixin, a log callback.

`LoraPlusMixin` builds the optimizer through `loraplus.create_optimizer` from the user's
`args.optim`, and refuses two silent ways of losing LoRA+: a DeepSpeed config that brings its own
optimizer or lr schedule, and a resume that would restore the checkpoint's old learning rates.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from torch import nn
from torch.optim import Optimizer
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraplus.groups import as_float
from loraplus.init import SCHEMES, init_lora_
from loraplus.optim import create_optimizer
from loraplus.roles import as_role

if TYPE_CHECKING:
    from transformers.trainer_callback import CallbackHandler

__all__ = [
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

OPTIMIZER_FILE = "optimizer.pt"
# DeepSpeed schedulers that scale each group's own lr; the others set one absolute lr for all.
_RATIO_PRESERVING_DS_SCHEDULERS = ("WarmupCosineLR",)
# get_optimizer_cls_and_kwargs keys that mean "this optimizer builds its own parameter groups".
_OWN_GROUP_KEYS = ("params", "model", "optimizer_dict")


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraPlusConfig:
    """The LoRA+ settings of one run, validated: ratio, embedding lr, init scheme, multipliers."""

    ratio: float = 16.0
    lr_embedding: float | None = None
    lora_init: str | None = None
    lr_multipliers: dict[str, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", as_float(self.ratio, "loraplus_lr_ratio"))
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

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> LoraPlusConfig:
        """Read the loraplus_* fields of any TrainingArguments (defaults if absent); kwargs win."""
        values: dict[str, Any] = {
            "ratio": getattr(args, "loraplus_lr_ratio", 16.0),
            "lr_embedding": getattr(args, "loraplus_lr_embedding", None),
            "lora_init": getattr(args, "lora_init", None),
            "lr_multipliers": getattr(args, "loraplus_lr_multipliers", None),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class LoraPlusTrainingArguments(TrainingArguments):
    """TrainingArguments plus the LoRA+ settings (lr_B = loraplus_lr_ratio · learning_rate)."""

    loraplus_lr_ratio: float = field(
        default=16.0, metadata={"help": "lr of LoRA B (and vectors, embeddings) / lr of LoRA A."}
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

    def __post_init__(self) -> None:
        """Validate the LoRA+ fields where they are first seen; JSON strings become dicts."""
        super().__post_init__()
        if isinstance(self.loraplus_lr_multipliers, str):
            self.loraplus_lr_multipliers = json.loads(self.loraplus_lr_multipliers)
        cfg = LoraPlusConfig.from_args(self)
        self.loraplus_lr_ratio = cfg.ratio
        self.loraplus_lr_embedding = cfg.lr_embedding
        self.loraplus_lr_multipliers = cfg.lr_multipliers


# --------------------------------------------------------------------------------------------
# Silent failure 1: DeepSpeed brings its own optimizer or lr schedule
# --------------------------------------------------------------------------------------------


def _parse_deepspeed(value: Any) -> dict[str, Any] | None:
    if value is None or value is False or value == "":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_file():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            return dict(loaded) if isinstance(loaded, Mapping) else None
        text = str(value)
        for decode in (lambda s: s, lambda s: base64.urlsafe_b64decode(s).decode("utf-8")):
            try:
                loaded = json.loads(decode(text))
            except (ValueError, binascii.Error, UnicodeDecodeError):
                continue
            return dict(loaded) if isinstance(loaded, Mapping) else None
        raise ValueError(
            f"DeepSpeed config {text!r} is not a file, a JSON string or base64 JSON; "
            "pass a dict or the path of a JSON file."
        )
    return None


def deepspeed_config(source: Any) -> dict[str, Any] | None:
    """The DeepSpeed config of a dict, a JSON path, TrainingArguments or a Trainer (else None)."""
    if source is None or isinstance(source, (Mapping, str, os.PathLike)):
        return _parse_deepspeed(source)
    inner_args = getattr(source, "args", None)
    if inner_args is not None and not isinstance(source, TrainingArguments):  # a Trainer
        found = deepspeed_config(inner_args)
        if found is not None:
            return found
        state = getattr(getattr(source, "accelerator", None), "state", None)
        plugin = getattr(state, "deepspeed_plugin", None) if state is not None else None
        cfg = getattr(plugin, "deepspeed_config", None)
        return dict(cfg) if isinstance(cfg, Mapping) else None
    hf_cfg = getattr(getattr(source, "hf_deepspeed_config", None), "config", None)
    if isinstance(hf_cfg, Mapping):
        return dict(hf_cfg)
    return _parse_deepspeed(getattr(source, "deepspeed", None))


def check_deepspeed_config(source: Any) -> None:
    """Raise if a DeepSpeed config would replace the LoRA+ optimizer or flatten its lrs.

    With an `optimizer` block, transformers builds DeepSpeed's optimizer (one lr for all tensors)
    and never calls create_optimizer. A `scheduler` block other than WarmupCosineLR sets one
    absolute lr (warmup_max_lr) on every param group at each step. Both drop the ratio silently.
    """
    cfg = deepspeed_config(source)
    if not cfg:
        return
    problems = []
    if "optimizer" in cfg:
        kind = (cfg.get("optimizer") or {}).get("type", "?")
        problems.append(
            f'its "optimizer" block ({kind}) makes transformers build DeepSpeed\'s optimizer with '
            "one learning rate for every tensor and skip create_optimizer"
        )
    sched = cfg.get("scheduler")
    if sched is not None and (sched or {}).get("type") not in _RATIO_PRESERVING_DS_SCHEDULERS:
        problems.append(
            f'its "scheduler" block ({(sched or {}).get("type", "?")}) sets the same absolute '
            "lr (warmup_max_lr) on every param group at each step"
        )
    if problems:
        raise ValueError(
            "The DeepSpeed config would silently drop LoRA+ (lr_B = ratio · lr_A): "
            + "; ".join(problems)
            + '. Fix: delete the "optimizer" block (and any "scheduler" block other than '
            "WarmupCosineLR) so the Trainer builds the LoRA+ optimizer from args.optim / "
            "learning_rate / weight_decay and schedules it with lr_scheduler_type / warmup_steps; "
            "DeepSpeed then wraps that optimizer. (Under DeepSpeed the Trainer discards an "
            "optimizer passed as optimizers=(...), so that is no way around it.)"
        )


# --------------------------------------------------------------------------------------------
# Silent failure 2: resuming restores the checkpoint's learning rates
# --------------------------------------------------------------------------------------------


def read_checkpoint_param_groups(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The param groups (without state) saved in `checkpoint`/optimizer.pt."""
    state = torch.load(Path(checkpoint) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return [dict(g) for g in state["param_groups"]]


def _base_lr(group: Mapping[str, Any]) -> float:
    """A group's unscheduled lr: the scheduler's `initial_lr` when it has one."""
    return float(group.get("initial_lr", group["lr"]))


def _fmt_ratio(groups: Sequence[Mapping[str, Any]]) -> str:
    lrs = {g.get("role"): _base_lr(g) for g in groups}
    a, b = lrs.get("lora_A"), lrs.get("lora_B")
    return f"ratio {b / a:g}" if a and b is not None else "ratio ?"


def compare_param_groups(
    saved: Sequence[Mapping[str, Any]], built: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What differs between a checkpoint's param groups and this run's: one line per change.

    Compares each role's base lr (`initial_lr`) and weight decay. Raises a ValueError when the
    groups are not the same roles in the same order, since the saved state would then be
    attached to the wrong tensors.
    """
    saved_roles = [g.get("role") for g in saved]
    built_roles = [g.get("role") for g in built]
    if saved_roles != built_roles:
        origin = (
            "was not written by LoRA+ (its groups have no role)"
            if all(r is None for r in saved_roles)
            else "has different LoRA+ groups"
        )
        raise ValueError(
            f"The checkpoint's optimizer {origin}: saved groups {saved_roles}, this run "
            f"built {built_roles} (the trainable tensors or their roles changed). Resume with "
            f"the same model and adapter set-up, or restart the optimizer state by deleting "
            f"{OPTIMIZER_FILE} and scheduler.pt from the checkpoint folder."
        )
    changes = []
    for old, new in zip(saved, built, strict=True):
        role = new.get("role")
        old_lr, new_lr = _base_lr(old), _base_lr(new)
        if not math.isclose(old_lr, new_lr, rel_tol=1e-9, abs_tol=0.0):
            changes.append(f"{role}: lr {old_lr:g} -> {new_lr:g}")
        old_wd, new_wd = float(old.get("weight_decay", 0.0)), float(new.get("weight_decay", 0.0))
        if not math.isclose(old_wd, new_wd, rel_tol=1e-9, abs_tol=0.0):
            changes.append(f"{role}: weight decay {old_wd:g} -> {new_wd:g}")
    if changes:
        changes.insert(0, f"{_fmt_ratio(saved)} -> {_fmt_ratio(built)}")
    return changes


def _apply_new_hyperparameters(
    optimizer: Any, scheduler: Any, built: Sequence[Mapping[str, Any]]
) -> None:
    """Put this run's base lrs and weight decays back after a checkpoint load, schedule kept."""
    sched = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    lambdas = getattr(sched, "lr_lambdas", None)
    last_epoch = getattr(sched, "last_epoch", None)
    for i, (group, new) in enumerate(zip(optimizer.param_groups, built, strict=True)):
        old_base, new_base = _base_lr(group), _base_lr(new)
        if lambdas is not None and last_epoch is not None:
            group["lr"] = new_base * lambdas[i](last_epoch)
        elif old_base > 0:
            group["lr"] = float(group["lr"]) * new_base / old_base
        else:
            group["lr"] = new_base
        if "initial_lr" in group:
            group["initial_lr"] = new_base
        group["weight_decay"] = new.get("weight_decay", group.get("weight_decay", 0.0))
    if sched is not None and hasattr(sched, "base_lrs"):
        sched.base_lrs = [_base_lr(g) for g in built]
    if sched is not None and hasattr(sched, "_last_lr"):
        sched._last_lr = [g["lr"] for g in optimizer.param_groups]


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


def role_learning_rates(optimizer: Any) -> dict[str, float]:
    """{"lr/lora_A": ..., "lr/lora_B": ...}: the current lr of each param group, keyed by role."""
    out: dict[str, float] = {}
    for i, group in enumerate(optimizer.param_groups):
        key = f"lr/{group.get('role', f'group_{i}')}"
        if key in out:
            key = f"{key}_{i}"
        lr = group["lr"]
        out[key] = float(lr.item() if torch.is_tensor(lr) else lr)
    return out


class LoraPlusLogCallback(TrainerCallback):
    """Adds each role's current lr (lr/lora_A, lr/lora_B, ...) to every training log.

    Callbacks run in order, so reporters (TensorBoard, W&B) only see the lrs if this one comes
    first: LoraPlusMixin puts it there; with a plain Trainer use
    `trainer.callback_handler.callbacks.insert(0, LoraPlusLogCallback())`. `state.log_history`
    gets them either way.
    """

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        optimizer: Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the per-role lrs to `logs` and to the log_history entry just written."""
        if logs is None or optimizer is None or "learning_rate" not in logs:
            return
        lrs = role_learning_rates(optimizer)
        logs.update(lrs)
        last = state.log_history[-1] if state.log_history else None
        if (
            last is not None
            and last.get("step") == state.global_step
            and last.get("learning_rate") == logs["learning_rate"]
        ):
            last.update(lrs)


def _log_callback_first(handler: CallbackHandler) -> None:
    existing = [cb for cb in handler.callbacks if isinstance(cb, LoraPlusLogCallback)]
    for cb in existing:
        handler.callbacks.remove(cb)
    handler.callbacks.insert(0, existing[0] if existing else LoraPlusLogCallback())


# --------------------------------------------------------------------------------------------
# Building the optimizer from TrainingArguments
# --------------------------------------------------------------------------------------------


def _build(
    args: TrainingArguments,
    model: nn.Module,
    cfg: LoraPlusConfig,
    cls_and_kwargs: tuple[Any, dict[str, Any]],
) -> Optimizer:
    """The LoRA+ optimizer for `model` from the class and kwargs chosen for args.optim."""
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
        lr=args.learning_rate,
        ratio=cfg.ratio,
        lr_embedding=cfg.lr_embedding,
        weight_decay=args.weight_decay,
        lr_multipliers=cfg.lr_multipliers,
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
        cfg = trainer_or_args.loraplus_config()
    else:
        cfg = LoraPlusConfig.from_args(args)
    if cfg.lora_init is not None:
        init_lora_(model, cfg.lora_init)
    getter: Any = (
        getattr(trainer_or_args, "get_optimizer_cls_and_kwargs", None) if is_trainer else None
    )
    getter = getter or transformers.Trainer.get_optimizer_cls_and_kwargs
    return _build(args, model, cfg, getter(args, model))


# --------------------------------------------------------------------------------------------
# The mixin and the Trainer
# --------------------------------------------------------------------------------------------


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

    def __init__(
        self,
        *args: Any,
        loraplus_lr_ratio: float | None = None,
        loraplus_lr_embedding: float | None = None,
        lora_init: str | None = None,
        loraplus_lr_multipliers: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Take the loraplus_* kwargs, check DeepSpeed early, then build the wrapped Trainer."""
        self._loraplus_inited: set[int] = set()
        self._loraplus_overrides: dict[str, Any] = {
            "ratio": loraplus_lr_ratio,
            "lr_embedding": loraplus_lr_embedding,
            "lora_init": lora_init,
            "lr_multipliers": loraplus_lr_multipliers,
        }
        early_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if early_args is not None:
            LoraPlusConfig.from_args(early_args, **self._loraplus_overrides)
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
        self.loraplus_config()
        _log_callback_first(self.callback_handler)
        if getattr(self, "model", None) is not None:
            self._loraplus_init(self.model)

    def loraplus_config(self) -> LoraPlusConfig:
        """This run's LoRA+ settings: the args' loraplus_* fields, overridden by init kwargs."""
        return LoraPlusConfig.from_args(self.args, **self._loraplus_overrides)

    def _loraplus_init(self, model: nn.Module) -> None:
        scheme = self.loraplus_config().lora_init
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
            self.optimizer = _build(self.args, opt_model, self.loraplus_config(), cls_and_kwargs)
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
