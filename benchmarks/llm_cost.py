"""What the memory flags cost and save: `loraplus train` on SmolLM2 with chat data.

Four runs of the built-in SmolLM2-135M-Instruct, each in its own process (so peak memory is its
own): float32; float32 with --gradient-checkpointing; a bfloat16 base with --bf16; a 4-bit NF4
base (--load-in-4bit) with --bf16. Each times the training loop (model loading and evaluations
excluded) and reads the process's peak resident memory (and, on a GPU, torch's peak allocated
memory). Prints the ratios checkpointing/plain and 4-bit/bf16 measured in this run.

Usage: python benchmarks/llm_cost.py [--steps 8] [--batch-size 4] [--words 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS: dict[str, dict[str, Any]] = {
    "float32": {},
    "float32 + checkpointing": {"gradient_checkpointing": True},
    "bf16 base + --bf16": {"dtype": "bfloat16", "bf16": True},
    "4-bit base + --bf16": {"load_in_4bit": True, "bf16": True},
}

WORDS = (  # an answer cycles through these words
    "the model reads a question and answers it in a few plain sentences with care about names "
    "places numbers dates reasons examples and what follows from them for the reader"
)


def write_chats(path: Path, rows: int, words: int) -> Path:
    """Chat JSONL: a question and an assistant answer of about `words` words."""
    vocab = WORDS.split()
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            answer = " ".join(vocab[(i + k) % len(vocab)] for k in range(words))
            turns = [
                {"role": "user", "content": f"Question {i}: explain item {i} in detail."},
                {"role": "assistant", "content": answer + "."},
            ]
            out.write(json.dumps({"messages": turns}) + "\n")
    return path


def one(name: str, data: str, out: str, steps: int, batch: int) -> dict[str, Any]:
    """Train one configuration in this process; its step time and peak memory."""
    import torch
    from _timing import Clock
    from transformers.utils import logging as hf_logging

    from loraplus.train import make_config, train

    hf_logging.set_verbosity_error()
    clock = Clock(start_step=1, rss=True)  # the first step warms up
    cfg = make_config(
        model="smollm2",
        data=data,
        max_steps=steps,
        eval_steps=steps,
        batch_size=batch,
        max_eval=batch,
        lr=2e-4,
        report_to="none",
        progress=False,
        save_adapter=False,
        output_dir=out,
        **RUNS[name],
    )
    result = train(cfg, callbacks=[clock])
    gpu = torch.cuda.is_available()
    return {
        "run": name,
        "ms_per_step": 1000 * clock.per_step(steps),
        "train_rss_mb": clock.peak / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        "final_eval_loss": result.final.get("eval_loss"),
        "precision": result.precision,
        "groups": [(g["role"], g["lr"]) for g in result.param_groups],
    }


def machine() -> str:
    """CPU or GPU name, for the record."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--words", type=int, default=120, help="words per assistant answer")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is a warm-up)")
    if args.one:
        print(json.dumps(one(args.one, args.data, args.out, args.steps, args.batch_size)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = write_chats(Path(tmp) / "chat.jsonl", 64, args.words)
        rows = []
        for i, name in enumerate(RUNS):
            command = [sys.executable, __file__, "--one", name, "--data", str(data)]
            command += ["--out", str(Path(tmp) / f"run{i}"), "--steps", str(args.steps)]
            command += ["--batch-size", str(args.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            gpu = f", peak GPU {row['peak_gpu_mb']:.0f} MB" if row["peak_gpu_mb"] else ""
            print(
                f"{name:24s} {row['ms_per_step']:7.0f} ms/step  RSS training "
                f"{row['train_rss_mb']:5.0f} MB (process peak {row['peak_rss_mb']:5.0f} MB)"
                f"{gpu}  eval_loss {row['final_eval_loss']:.3f}",
                flush=True,
            )
    by = {r["run"]: r for r in rows}
    assert len({tuple(map(tuple, r["groups"])) for r in rows}) == 1, "LoRA+ groups differ"
    memory = "peak_gpu_mb" if rows[0]["peak_gpu_mb"] else "train_rss_mb"
    print(
        f"SmolLM2-135M-Instruct, LoRA r=8 on q_proj/v_proj, chat data (~{args.words}-word "
        f"answers), batch {args.batch_size}, {args.steps} steps; {machine()}"
    )
    for label, a, b in (
        ("checkpointing / plain", "float32 + checkpointing", "float32"),
        ("4-bit / bf16", "4-bit base + --bf16", "bf16 base + --bf16"),
    ):
        time_ratio = by[a]["ms_per_step"] / by[b]["ms_per_step"]
        mem_ratio = by[a][memory] / by[b][memory]
        print(f"  {label:22s} step time x{time_ratio:.2f}, {memory} x{mem_ratio:.2f}")


if __name__ == "__main__":
    main()
