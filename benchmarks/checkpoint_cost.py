"""What checkpoints cost: `loraplus train` step time with --save-steps against none (MiniLM).

Runs the built-in MiniLM on Rotten Tomatoes for --steps steps, alternately without checkpoints
and with --save-steps (rounds interleaved, so machine noise hits both alike), times the training
loop (model loading and the step-0 evaluation excluded) and each complete checkpoint write
(staging, adapter, optimizer, scheduler, RNG, trainer state, marker, rename). Prints the
ratios measured in this run. Usage: python benchmarks/checkpoint_cost.py [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _timing import Clock
from transformers.utils import logging as hf_logging

from loraplus.train import make_config, train


def one_run(root: Path, steps: int, save_steps: int, tag: str) -> Clock:
    """One MiniLM run; eval only at step 0 and at the end, so evals do not blur the steps."""
    clock = Clock()
    cfg = make_config(
        model="minilm",
        data="rotten-tomatoes",
        max_steps=steps,
        eval_steps=steps,
        max_train=2000,
        max_eval=64,
        batch_size=16,
        max_length=64,
        lr=4e-4,
        report_to="none",
        progress=False,
        save_adapter=False,
        save_steps=save_steps,
        output_dir=str(root / tag),
    )
    train(cfg, callbacks=[clock])
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per run")
    parser.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved pairs of runs")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base, saving, writes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            if i % 2 == 0:  # alternate which goes first, so warm-up hits both alike
                plain = one_run(Path(tmp), args.steps, 0, f"plain{i}")
                ckpt = one_run(Path(tmp), args.steps, args.save_steps, f"save{i}")
            else:
                ckpt = one_run(Path(tmp), args.steps, args.save_steps, f"save{i}")
                plain = one_run(Path(tmp), args.steps, 0, f"plain{i}")
            base.append(plain.per_step(args.steps))
            saving.append(ckpt.per_step(args.steps))
            writes += ckpt.saves
            print(
                f"round {i}: {base[-1] * 1e3:.1f} ms/step without checkpoints, "
                f"{saving[-1] * 1e3:.1f} ms/step with --save-steps {args.save_steps} "
                f"({len(ckpt.saves)} checkpoints, {', '.join(f'{s:.3f}' for s in ckpt.saves)} s)"
            )
        folders = list((Path(tmp) / "save0").glob("checkpoint-*"))
        size = sum(f.stat().st_size for d in folders for f in d.iterdir()) / max(1, len(folders))
    b, s, w = statistics.median(base), statistics.median(saving), statistics.median(writes)
    print(f"MiniLM (LoRA r=8 on query/value + head), batch 16, length 64, {args.steps} steps")
    print(f"  step time without checkpoints       {b * 1e3:8.1f} ms")
    print(f"  step time with --save-steps {args.save_steps:<6}  {s * 1e3:8.1f} ms")
    print(f"  one complete checkpoint write       {w * 1e3:8.1f} ms  ({size / 1e6:.1f} MB on disk)")
    print(f"  step-time ratio saving/plain = {s / b:.3f}")
    print(f"  checkpoint write / plain step = {w / b:.2f} steps")


if __name__ == "__main__":
    main()
