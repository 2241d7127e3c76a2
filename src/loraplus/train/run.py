"""One run: TrainConfig -> model + data + LoraPlusTrainer -> metrics.json, curves, adapter."""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus._extras import require
from loraplus.adapter import portable_base
from loraplus.train.checks import load_checked
from loraplus.train.config import TrainConfig, make_config
from loraplus.train.data import (
    _by_length,
    check_chat_template,
    collator,
    first_conversation,
    max_length_for,
    preview_rows,
    set_chat_template,
    sft_rows,
    tokenize,
    truncation_warning,
)
from loraplus.train.history import eval_rows, final_metrics, train_losses
from loraplus.train.outputs import curves_title, resumed_settings, write_outputs
from loraplus.train.record import TrainResult

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger(__name__)


_LOGGING_STEPS_MAX = 10  # see _logging_steps


@functools.cache
def _progress_class() -> Any:
    """The progress bar callback, defined on first use: importing transformers' trainer takes
    seconds, and `loraplus --help` should not wait for it."""
    from transformers.trainer_callback import ProgressCallback

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

    return PostfixProgressCallback


def _accuracy(prediction: Any) -> dict[str, float]:
    """Eval accuracy, classes predicted, and the loss as a mean over rows (see _argmax)."""
    import numpy as np

    preds, row_loss = prediction.predictions
    preds, labels = np.asarray(preds), np.asarray(prediction.label_ids)
    return {
        "accuracy": float((preds == labels).mean()),
        # how many classes the model predicts at all: 1 means it collapsed (collapse_warning)
        "predicted_classes": len(np.unique(preds)),
        "row_loss": float(np.asarray(row_loss, dtype=np.float64).mean()),
    }


def _argmax(logits: Any, labels: Any) -> Any:
    """Keep each eval example's predicted class and loss (not the logits).

    The per-row loss makes eval_loss exact under DDP, where accelerate fills the last eval batch
    of each process with repeated rows: HF's batch-mean loss counts those, gathered rows do not.
    """
    import torch

    logits = logits[0] if isinstance(logits, tuple) else logits
    row_loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    return logits.argmax(dim=-1), row_loss


def _logging_steps(cfg: TrainConfig) -> int:
    """Log the train loss every min(10, eval_steps) steps, and at every checkpoint step, so a
    resumed run logs the same loss averages as an uninterrupted one."""
    every = min(_LOGGING_STEPS_MAX, cfg.eval_steps)
    return math.gcd(every, cfg.save_steps) if cfg.save_steps > 0 else every


def _tensorboard(cfg: TrainConfig, output_dir: Path, main: bool) -> list[TrainerCallback]:
    """TensorBoard writing to output_dir/tensorboard (main process only) instead of runs/."""
    if "tensorboard" not in cfg.report_to or not main:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(output_dir / "tensorboard")))]


def _sft_arguments(cfg: TrainConfig, max_length: int, rows: Any) -> dict[str, Any]:
    """SFTConfig's own settings: length, packing, and which tokens carry loss."""
    return {
        "max_length": max_length,
        "packing": cfg.packing,
        # prompt/completion rows: loss on the completion only, unless --train-on-prompt
        "completion_only_loss": not cfg.train_on_prompt,
        # messages rows are kept only with --train-on-prompt or a template that marks turns
        "assistant_only_loss": "messages" in rows.column_names and not cfg.train_on_prompt,
    }


def _training_args(
    cfg: TrainConfig,
    output_dir: Path,
    report_to: list[str],
    sft: dict[str, Any] | None = None,
) -> Any:
    """LoraPlusTrainingArguments for the run (DDP settings from the launcher's environment);
    for a causal LM, LoRA+ arguments on TRL's SFTConfig with `sft`'s settings."""
    from loraplus.hf import LoraPlusTrainingArguments, trainer_arguments
    from loraplus.train.distributed import (
        check_distributed,
        init_deepspeed_comm,
        parallel_arguments,
    )
    from loraplus.train.trainer import sft_classes

    classification = cfg.task == "classification"
    arguments_class = LoraPlusTrainingArguments if sft is None else sft_classes()[0]
    eval_batch = cfg.eval_batch_size or (
        max(64, cfg.batch_size) if classification else cfg.batch_size
    )
    args = arguments_class(
        output_dir=str(output_dir),
        **trainer_arguments(cfg.settings()),  # learning_rate and the loraplus_* fields
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=eval_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        optim=cfg.optimizer,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=True,
        logging_strategy="steps",
        logging_steps=_logging_steps(cfg),
        logging_first_step=True,  # the untrained model's loss: the divergence guard's reference
        logging_nan_inf_filter=False,  # NaN must reach the divergence guard
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_only_model=False,
        report_to=report_to or "none",
        disable_tqdm=not cfg.progress,
        seed=cfg.seed,
        data_seed=cfg.seed_of_data(),
        metric_for_best_model=_metric(cfg) if cfg.early_stopping_patience else None,
        greater_is_better=classification if cfg.early_stopping_patience else None,
        remove_unused_columns=not classification,  # TRL keeps input_ids, labels, seq_lengths
        label_names=["labels"],
        prediction_loss_only=not classification,
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_pin_memory=_has_cuda(),
        deepspeed=None if cfg.deepspeed is None else str(Path(cfg.deepspeed).expanduser()),
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        torch_compile=cfg.torch_compile,
        torch_compile_backend=cfg.torch_compile_backend if cfg.torch_compile else None,
        **(sft or {}),
        # bf16 autocast on a CPU must be asked for with use_cpu (as several CPU processes do)
        **{"use_cpu": cfg.bf16 and not _has_cuda(), **parallel_arguments()},
    )
    check_distributed(args)
    init_deepspeed_comm(args)
    return args


def _peft_optimizer(cfg: TrainConfig, model: Any) -> Any:
    """peft's LoRA-FA / Riemannian optimizer for --lora-optimizer, with --lr-roles applied;
    None for loraplus (the Trainer builds the LoRA+ optimizer)."""
    if cfg.lora_optimizer == "loraplus":
        return None
    from loraplus.optim import with_role_lrs
    from loraplus.train.methods import peft_optimizer

    lora = model.peft_config[model.active_adapter]
    opt = peft_optimizer(
        cfg.lora_optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay, lora=lora
    )
    for group in opt.param_groups:
        group.setdefault("role", cfg.lora_optimizer)
    return with_role_lrs(opt, model, cfg.role_lrs())


def _metric(cfg: TrainConfig) -> str:
    """The run's eval metric: accuracy for a classifier, loss for a causal LM."""
    return "eval_accuracy" if cfg.task == "classification" else "eval_loss"


def _early_stopping(cfg: TrainConfig) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback on the run's metric, when a patience is set."""
    if not cfg.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]


def _resume_point(cfg: TrainConfig, output_dir: Path, label_names: list[str]) -> Path | None:
    """The checkpoint to resume from (None: fresh), verified and checked against this run's
    settings before any model loads; other changes that matter are said in one warning."""
    from loraplus.train import checkpoint as ckpt

    resume = ckpt.resolve_resume(cfg.resume, output_dir)
    if resume is None:
        return None
    ckpt.check_compatible(resume, cfg.to_dict(), label_names, cfg.max_steps)
    changes = ckpt.config_changes(ckpt.saved_config(resume), cfg.to_dict())
    if changes:
        log.warning(
            "Resuming from %s, saved with other settings (%s): the run will not match an "
            "uninterrupted one.",
            resume,
            "; ".join(changes),
        )
    return resume


def _finished(result: TrainResult, output_dir: Path, main: bool) -> TrainResult:
    """The record of a finished run that --resume found with these very settings (a no-op)."""
    result.output_dir, result.main_process = output_dir, main
    if main:
        log.warning(
            "%s holds this run, finished at step %s: nothing to resume (its files are kept).",
            output_dir,
            result.final.get("steps"),
        )
    return result


@dataclass
class _Prepared:
    """A run's data and tokenizer after every check that needs no model."""

    data: Any  # loraplus.data.TaskData
    tokenizer: Any
    max_length: int
    train_rows: Any = None  # causal LM: the rows in TRL's format
    eval_rows: Any = None


def _prepare(cfg: TrainConfig, data: Any) -> _Prepared:
    """Tokenizer, --chat-template and the causal-LM rows (validated before the model loads)."""
    from loraplus.train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    max_length = max_length_for(cfg.task, cfg.max_length, tokenizer)
    if cfg.task == "classification":
        return _Prepared(data, tokenizer, max_length)
    require("trl", "causal-LM training (TRL's SFTTrainer)")
    set_chat_template(tokenizer, cfg.chat_template)
    check_chat_template(tokenizer, first_conversation(data.train))
    return _Prepared(
        data,
        tokenizer,
        max_length,
        sft_rows(data.train, tokenizer, cfg.train_on_prompt),
        sft_rows(data.eval, tokenizer, cfg.train_on_prompt),
    )


def _trainer(
    cfg: TrainConfig,
    prep: _Prepared,
    args: Any,
    model: Any,
    guard: Any,
    callbacks: list[TrainerCallback],
    global_batch: int,
) -> Any:
    """RunTrainer (classification, tokenized here) or RunSFTTrainer (TRL prepares the rows)."""
    from loraplus.train.trainer import RunTrainer, sft_classes

    common: dict[str, Any] = {
        "model": model,
        "args": args,
        "processing_class": prep.tokenizer,
        "callbacks": callbacks,
        "optimizers": (_peft_optimizer(cfg, model), None),
        "run_config": cfg.to_dict(),
        "guard": guard,
        "keep": cfg.save_total_limit,
        "global_batch": global_batch,
        "label_names": prep.data.label_names,
    }
    if cfg.task == "classification":
        tokenizer, data = prep.tokenizer, prep.data
        return RunTrainer(
            train_dataset=tokenize(data.train, tokenizer, cfg.task, prep.max_length),
            eval_dataset=_by_length(tokenize(data.eval, tokenizer, cfg.task, prep.max_length)),
            data_collator=collator(tokenizer, cfg.task),
            compute_metrics=_accuracy,
            preprocess_logits_for_metrics=_argmax,
            **common,
        )
    from loraplus.data.table import quiet_datasets

    run_sft_trainer = sft_classes()[1]
    with quiet_datasets():  # TRL's preparation: no progress bars
        return run_sft_trainer(train_dataset=prep.train_rows, eval_dataset=prep.eval_rows, **common)


def _check_examples(cfg: TrainConfig, trainer: Any, cut: str | None) -> None:
    """At least one batch of training examples is left after truncation and packing."""
    left = len(trainer.train_dataset)
    if left < cfg.batch_size:
        why = f" ({cut})" if cut else ""
        raise ValueError(
            f"{left} training examples are left after tokenization{why}, fewer than one batch "
            f"(--batch-size {cfg.batch_size}): raise --max-length, add rows or lower --batch-size."
        )


def preview(cfg: TrainConfig) -> list[dict[str, str]]:
    """The first cfg.preview_data training examples after all processing (template, masks,
    truncation, packing): {"text": decoded input, "trained": decoded loss-carrying tokens}.

    Reads the data and loads the model, trains nothing and writes nothing.
    """
    require("train", "loraplus.train.preview")
    import tempfile

    from loraplus.data import load_data
    from loraplus.train.checks import check_paths, check_rows, data_options
    from loraplus.train.guard import DivergenceGuard
    from loraplus.train.model import check_machine, load_model

    cfg = make_config(**cfg.to_dict())
    check_paths(cfg)
    check_machine(cfg)
    data = load_data(cfg.data, **data_options(cfg))
    check_rows(cfg, data)
    prep = _prepare(cfg, data)
    if cfg.task == "classification":
        encoded = tokenize(data.train, prep.tokenizer, cfg.task, prep.max_length)
        return preview_rows(encoded, prep.tokenizer, cfg.preview_data, data.label_names)
    model = load_model(cfg, data, prep.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        sft = _sft_arguments(cfg, prep.max_length, prep.train_rows)
        args = _training_args(cfg, Path(tmp), [], sft)
        trainer = _trainer(cfg, prep, args, model, DivergenceGuard(cfg.divergence_factor), [], 1)
        return preview_rows(trainer.train_dataset, prep.tokenizer, cfg.preview_data)


def train(cfg: TrainConfig, *, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` with LoRA+; write metrics, curves and the adapter.

    The output folder is locked for the whole run (one run per folder); with --resume, a
    finished run with the same settings is returned as it is.
    """
    require("train", "loraplus.train.train")
    from loraplus.train.checks import finished_run
    from loraplus.train.lock import is_main_launch, run_lock
    from loraplus.train.model import check_machine

    cfg = make_config(**cfg.to_dict())  # validated copy (a caller may have changed fields)
    check_machine(cfg)
    output_dir = Path(cfg.output_dir).expanduser()
    with run_lock(output_dir, take=is_main_launch()):
        done = finished_run(cfg)
        if done is not None:
            return _finished(done, output_dir, is_main_launch())
        return _train(cfg, output_dir, callbacks)


def _train(
    cfg: TrainConfig, output_dir: Path, callbacks: list[TrainerCallback] | None
) -> TrainResult:
    """The run itself, inside the folder's lock."""
    from loraplus.hf.callbacks import FeatureUpdateCallback
    from loraplus.train import checkpoint as ckpt
    from loraplus.train.guard import DivergenceGuard, collapse_warning
    from loraplus.train.model import load_model, precision
    from loraplus.train.outputs import clear_previous

    data = load_checked(cfg)  # paths, output folder, data and rows, before the model loads
    resume = _resume_point(cfg, output_dir, data.label_names)
    prep = _prepare(cfg, data)  # tokenizer, chat template, causal-LM rows
    report_to = [r for r in cfg.report_to if r != "tensorboard"]
    classification = cfg.task == "classification"
    sft = None if classification else _sft_arguments(cfg, prep.max_length, prep.train_rows)
    args = _training_args(cfg, output_dir, report_to, sft)
    main = args.process_index == 0
    if main:
        ckpt.clean_partial(output_dir)
        clear_previous(output_dir)
    resumed = resumed_settings(resume)  # for the curves' title, before rotation may remove it
    args.eval_on_start = resume is None  # a checkpoint's history has the step-0 eval already
    args.distributed_state.wait_for_everyone()
    model = load_model(cfg, data, prep.tokenizer)
    tokenizer = prep.tokenizer
    metric = _metric(cfg)

    guard = DivergenceGuard(cfg.divergence_factor)
    probe = FeatureUpdateCallback(cfg.probe_every) if cfg.probe_every > 0 else None
    stop_early = _early_stopping(cfg)
    global_batch = cfg.batch_size * cfg.grad_accum * args.world_size
    trainer = _trainer(
        cfg,
        prep,
        args,
        model,
        guard,
        [
            guard,
            *_tensorboard(cfg, output_dir, main),
            *([probe] if probe is not None else []),
            *stop_early,
            *(callbacks or []),
        ],
        global_batch,
    )
    truncation = getattr(trainer, "truncation", {}).get("train", {})
    cut = truncation_warning(truncation, prep.max_length)
    _check_examples(cfg, trainer, cut)  # (the CLI prints `cut` once, with the run's results)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if classification:
        # The classifier's loss is a batch mean that ignores num_items_in_batch; told otherwise,
        # the Trainer would multiply it by the number of processes under DDP.
        trainer.model_accepts_loss_kwargs = False
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if cfg.progress:
        trainer.add_callback(_progress_class()(metric))

    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    steps = trainer.state.global_step
    guard.check_weights(trainer.model, trainer.state, trainer.optimizer)
    rows = eval_rows(trainer.state.log_history)
    if guard.diverged is None and (not rows or rows[-1]["step"] != steps):
        trainer.evaluate()
        rows = eval_rows(trainer.state.log_history)
    seconds = time.perf_counter() - start
    diverged = guard.diverged
    final = final_metrics(rows, metric, steps, seconds, diverged is not None)
    warnings = [cut] if cut else []
    if classification and diverged is None:
        collapse = collapse_warning(final, data.num_labels, len(set(data.eval["label"])))
        warnings += [collapse] if collapse else []
    lrs = {
        str(g.get("role")): float(g.get("initial_lr", g["lr"]))
        for g in trainer.optimizer.param_groups
    }
    losses = train_losses(trainer.state.log_history)
    result = TrainResult(
        history=rows,
        final=final,
        output_dir=output_dir,
        diverged=diverged is not None,
        diverged_reason=diverged.message() if diverged else None,
        diverged_at_step=diverged.step if diverged else None,
        warnings=warnings,
        config=cfg.to_dict(),
        world_size=args.world_size,
        global_batch_size=global_batch,
        resumed_from=str(resume) if resume is not None else None,
        train_loss_log=losses,
        feature_updates=probe.history if probe is not None else [],
        param_groups=_param_groups(trainer.optimizer, trainer.model),
        max_length=prep.max_length,
        truncation=truncation or None,
        precision={
            "bf16": cfg.bf16,
            "fp16": cfg.fp16,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "torch_compile": cfg.torch_compile,
            **precision(trainer.model),
        },
        data={
            "source": data.source,
            "split": data.split,
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "train_examples": len(trainer.train_dataset),
            "label_names": data.label_names,
        },
        main_process=main,
    )
    if main:
        write_outputs(
            result,
            {
                "train_steps": [e["step"] for e in losses],
                "train_loss": [e["loss"] for e in losses],
                "eval_steps": [r["step"] for r in rows],
                "eval_metric": [r.get(metric) for r in rows],
                "eval_loss": [r.get("eval_loss") for r in rows],
                "metric_name": metric,
                "title": curves_title(cfg, lrs, resumed),
            },
            trainer.model,
            tokenizer,
            save_adapter=cfg.save_adapter,
            merge=cfg.merge,
            base=portable_base(cfg.model),
        )
    trainer.accelerator.wait_for_everyone()
    return result


def _param_groups(optimizer: Any, model: Any) -> list[dict[str, Any]]:
    """Each param group's role, base lr, weight decay and full size (also under DeepSpeed),
    for metrics.json."""
    from loraplus.optim import group_sizes

    return [
        {
            "role": g.get("role"),
            "lr": float(g.get("initial_lr", g["lr"])),
            "weight_decay": g.get("weight_decay", 0.0),
            "tensors": tensors,
            "parameters": parameters,
            **({"fan_in": g["fan_in"]} if "fan_in" in g else {}),
        }
        for g, (tensors, parameters) in zip(
            optimizer.param_groups, group_sizes(optimizer, model), strict=True
        )
    ]


def _has_cuda() -> bool:
    """True when torch sees a CUDA device (pinned memory helps only then)."""
    import torch

    return bool(torch.cuda.is_available())
