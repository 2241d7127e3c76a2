"""The Trainer of `loraplus train`: LoraPlusTrainer whose checkpoints are complete or absent.

Checkpoints are written under `<output_dir>/.staging/` by the Trainer's own `_save_checkpoint`
(adapter, optimizer, scheduler, RNG, trainer state), then the config marker is added and the
main process renames the folder into place and rotates old ones. Weights holding NaN/inf are
never checkpointed: the divergence guard stops the run instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from loraplus.hf import LoraPlusTrainer
from loraplus.train import checkpoint as ckpt
from loraplus.train.guard import DivergenceGuard


class RunTrainer(LoraPlusTrainer):
    """LoraPlusTrainer with atomic checkpoints and a weight check before each one."""

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
        """HF's loop; a classifier's eval_loss is the mean of the gathered per-row losses."""
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        metrics = output.metrics if output.metrics is not None else {}
        row_loss = metrics.pop(f"{prefix}_row_loss", None)
        if row_loss is not None:
            metrics[f"{prefix}_loss"] = row_loss
        return output

    def _get_output_dir(self, trial: Any) -> str:
        base: str = super()._get_output_dir(trial)
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
            super()._save_checkpoint(model, trial)
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
        return super()._run_epoch(*args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.args.should_save:
            ckpt.maybe_pause(Path(str(self.args.output_dir)), self.state.global_step)
        super()._save_optimizer_and_scheduler(output_dir)
