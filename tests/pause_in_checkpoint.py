"""`python tests/pause_in_checkpoint.py STEP OUTPUT_DIR train ...`: `loraplus train ...` that blocks
inside the write of checkpoint-STEP, after its adapter and before its optimizer state.

Tests SIGKILL the process there, once it has written OUTPUT_DIR/.paused-in-checkpoint (its pid).
Nothing in loraplus knows of it: torch's public optimizer hooks reach that moment. A global step
hook finds the optimizer the Trainer steps and gives it a state_dict pre-hook; the Trainer asks
for that state dict after it wrote the staged adapter and before it writes optimizer.pt.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook

from loraplus.cli import main
from loraplus.train import checkpoint as ckpt

PAUSED_FILE = ".paused-in-checkpoint"


def pause_in_checkpoint(step: int, output_dir: Path) -> None:
    """Block forever when an optimizer's state is saved while checkpoint-`step` is staged."""
    staged = output_dir / ckpt.STAGING / f"{ckpt.PREFIX}{step}"
    hooked: set[int] = set()

    def pause(optimizer: Optimizer) -> None:
        if not (staged / "adapter_model.safetensors").is_file():
            return
        (output_dir / PAUSED_FILE).write_text(str(os.getpid()), encoding="utf-8")
        while True:  # the test SIGKILLs the process here
            time.sleep(1.0)

    def find(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if id(optimizer) not in hooked:
            hooked.add(id(optimizer))
            optimizer.register_state_dict_pre_hook(pause)

    register_optimizer_step_post_hook(find)


if __name__ == "__main__":
    pause_in_checkpoint(int(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
