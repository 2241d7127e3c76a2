"""The Trainers of `loraplus train`: LoraPlusTrainer (classification) and LoRA+ on TRL's
SFTTrainer (causal LM), both with checkpoints that are complete or absent.

Checkpoints are written under `<output_dir>/.staging/` by the Trainer's own `_save_checkpoint`
(adapter, optimizer, scheduler, RNG, trainer state), then the config marker is added and the
main process renames the folder into place and rotates old ones. Weights holding NaN/inf are
never checkpointed: the divergence guard stops the run instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus.hf import LoraPlusTrainer
from loraplus.train import checkpoint as ckpt
from loraplus.train.guard import DivergenceGuard


class _RunMixin:
    """Atomic checkpoints and a weight check before each one, for any HF Trainer below it."""

    if TYPE_CHECKING:  # what the Trainer below provides
        args: Any
        state: Any
        model: Any
        optimizer: Any
        control: Any
        accelerator: Any

    def __init__(
        self,
        *args: Any,
        run_config: dict[str, Any],
        guard: DivergenceGuard,
        keep: int | None,
        global_batch: int,
        label_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Take the run's config and label set (stored in each checkpoint), guard and rotation
        limit."""
        self._run_config = run_config
        self._label_names = list(label_names or [])
        self._guard = guard
        self._keep = keep
        self._global_batch = global_batch
        self._staging = False
        super().__init__(*args, **kwargs)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """HF's loop; a classifier's eval_loss is the mean of the gathered per-row losses; with
        the run's exact_match, <prefix>_exact_match beside it (so it is logged with them)."""
        output = super().evaluation_loop(*args, **kwargs)  # type: ignore[misc]
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        metrics = output.metrics if output.metrics is not None else {}
        row_loss = metrics.pop(f"{prefix}_row_loss", None)
        if row_loss is not None:
            metrics[f"{prefix}_loss"] = row_loss
        if self._run_config.get("exact_match"):
            loader = kwargs.get("dataloader", args[0] if args else None)
            metrics[f"{prefix}_exact_match"] = self._exact_match(loader)
        return output

    def _exact_match(self, loader: Any) -> float:
        """Share of eval rows greedy decoding answers exactly (exact_match), gathered over every
        process: one teacher-forced forward pass per batch."""
        import torch

        hits = rows = 0
        self.model.eval()
        for batch in loader:
            batch = self._prepare_inputs(batch)  # type: ignore[attr-defined]
            inputs = {k: batch.get(k) for k in ("input_ids", "attention_mask", "position_ids")}
            with torch.no_grad():
                logits = self.model(**{k: v for k, v in inputs.items() if v is not None}).logits
            right, scored = answered(logits.argmax(dim=-1), batch["labels"])
            right, scored = self.accelerator.gather_for_metrics((right, scored))
            hits, rows = hits + int(right.sum()), rows + int(scored.sum())
        return hits / rows if rows else math.nan

    def _get_output_dir(self, trial: Any) -> str:
        base: str = super()._get_output_dir(trial)  # type: ignore[misc]
        return os.path.join(base, ckpt.STAGING) if self._staging else base

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write the checkpoint into the staging folder, then publish it whole (main process)."""
        step = self.state.global_step
        if not self._guard.check_weights(self.model, self.state, self.optimizer):
            self.control.should_training_stop = True
            return
        output_dir = Path(str(self.args.output_dir))
        staged = output_dir / ckpt.STAGING / f"{ckpt.PREFIX}{step}"
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every rank's RNG state is in
        if self.args.should_save:
            ckpt.write_marker(
                staged, self._run_config, self.state, self._global_batch, self._label_names
            )
            ckpt.publish(staged, output_dir, self._keep)
        self.accelerator.wait_for_everyone()

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """HF's epoch, skipped once max_steps is reached: a run resumed from its last
        checkpoint would otherwise take one more step (and one more on every resume)."""
        step, total = self.state.global_step, self.state.max_steps
        if total > 0 and step > total:  # fewer --epochs than the checkpoint has trained
            raise ValueError(
                f"--resume: the checkpoint is at step {step}, past this run's {total} steps: "
                "raise --epochs (or --max-steps), or --resume an earlier checkpoint."
            )
        if total > 0 and step >= total:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)  # type: ignore[misc]


class RunTrainer(_RunMixin, LoraPlusTrainer):
    """LoraPlusTrainer with atomic checkpoints and a weight check before each one."""


@functools.cache
def sft_classes() -> tuple[type, type]:
    """(LoraPlusSFTConfig, RunSFTTrainer), defined on first use: TRL imports take seconds."""
    from trl import SFTConfig, SFTTrainer

    from loraplus.hf import LoraPlusMixin, LoraPlusTrainingArguments

    @dataclasses.dataclass
    class LoraPlusSFTConfig(LoraPlusTrainingArguments, SFTConfig):
        """TRL's SFTConfig with the loraplus_* fields."""

    class RunSFTTrainer(_RunMixin, LoraPlusMixin, SFTTrainer):
        """LoRA+ on TRL's SFTTrainer, with atomic checkpoints; counts what truncation cuts.

        TRL tokenizes (chat template, assistant / completion masks), truncates and packs. Its
        preparation runs twice here: once whole, to count the examples longer than max_length,
        then on those tokens to truncate (and pack) them as configured.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.truncation: dict[str, dict[str, int]] = {}
            super().__init__(*args, **kwargs)

        def _prepare_dataset(
            self,
            dataset: Any,
            processing_class: Any,
            args: Any,
            packing: bool,
            formatting_func: Any,
            dataset_name: str,
        ) -> Any:
            limit = args.max_length
            args.max_length = None
            try:
                whole = super()._prepare_dataset(
                    dataset, processing_class, args, False, formatting_func, dataset_name
                )
            finally:
                args.max_length = limit
            if limit is not None:
                self.truncation[dataset_name] = count_truncated(whole, limit)
            return super()._prepare_dataset(
                whole, processing_class, args, packing, formatting_func, dataset_name
            )

    return LoraPlusSFTConfig, RunSFTTrainer


def answered(predicted: Any, labels: Any) -> tuple[Any, Any]:
    """Per row (right, scored): scored when the row has answer tokens (labels != -100, EOS
    included), right when the argmax one position earlier predicts every one of them. Greedy
    decoding reproduces an answer iff, fed that answer, it predicts each of its tokens, so
    right is "the greedy answer is exactly the response"."""
    predicted, labels = predicted[:, :-1], labels[:, 1:]
    answer = labels != -100
    scored = answer.any(dim=1)
    return ((predicted == labels) | ~answer).all(dim=1) & scored, scored


def count_truncated(dataset: Any, limit: int) -> dict[str, int]:
    """Of tokenized examples (input_ids, labels): how many exceed `limit` tokens, how many of
    those lose their last loss-carrying token (the end of sequence or turn), and how many keep
    no loss-carrying token at all (TRL drops those)."""
    out = {"examples": len(dataset), "truncated": 0, "lost_end": 0, "dropped": 0}
    for labels in dataset["labels"]:
        if len(labels) <= limit:
            continue
        out["truncated"] += 1
        trained = [i for i, label in enumerate(labels) if label != -100]
        if trained and trained[-1] >= limit:
            out["lost_end"] += 1
        if trained and trained[0] >= limit:
            out["dropped"] += 1
    return out
