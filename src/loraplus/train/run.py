"""One run: TrainConfig -> model + data + LoraPlusTrainer -> metrics.json, curves, adapter."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus import zoo
from loraplus._extras import require
from loraplus._io import atomic_dir, write_json

if TYPE_CHECKING:
    from transformers import TrainerCallback
from loraplus.train.checks import load_checked
from loraplus.train.config import TrainConfig, TrainResult, make_config
from loraplus.train.data import CausalLMCollator, _by_length, tokenize

log = logging.getLogger(__name__)


_LOGGING_STEPS_MAX = 10  # train loss is logged every min(10, eval_steps) steps


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


def _targets(cfg: TrainConfig) -> list[str] | str | None:
    """target_modules as PEFT takes them: a list of names, or the string "all-linear"."""
    names = cfg.target_modules
    return "all-linear" if names == ["all-linear"] else names


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
        target_modules=_targets(cfg) or _default_targets(cfg, model),
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as err:
        raise ValueError(f"{err} (check --target-modules for {cfg.model!r})") from None
    return peft_model, tokenizer


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
            from loraplus.autoratio import auto_ratio_logs
            from loraplus.hf import role_learning_rates

            row.update(role_learning_rates(optimizer))
            row.update(auto_ratio_logs(optimizer))
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
    require("train", "loraplus.train.train")
    from loraplus.diagnostics import FeatureUpdateCallback
    from loraplus.hf import LoraPlusTrainer, LoraPlusTrainingArguments
    from loraplus.plots import plot_training_curves

    cfg = make_config(**cfg.to_dict())  # validated copy (a caller may have changed fields)
    output_dir = Path(cfg.output_dir).expanduser()
    data = load_checked(cfg)  # paths, output folder, data and rows, before the model loads
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
        loraplus_lr_multipliers=cfg.multipliers() or None,
        loraplus_width_aware=cfg.width_aware,
        loraplus_n_ref=cfg.n_ref,
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
                **({"fan_in": g["fan_in"]} if "fan_in" in g else {}),
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
            "title": f"{cfg.model} on {cfg.data}: lr {cfg.lr:g}, ratio {cfg.ratio}",
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
