"""What watching and steering the ratio costs: probe every 10 steps and ratio="auto" vs LoRA+.

A small real Llama (hidden 256, 4 layers, LoRA r=8 on all seven projections, CPU), one training
loop, four ways, interleaved in rounds of 10 steps so machine noise hits all alike:
  LoRA+          create_optimizer(ratio=16), nothing else
  + probe/10     the same, with FeatureUpdateProbe doing what FeatureUpdateCallback(every=10) does
                 (hooks always on; inputs recorded, A and B snapshot and δ¹/δ²/δ³ measured per
                 layer, records and per-kind scalars built, on one step in 10)
  auto/10        create_optimizer(ratio="auto"), the default controller (update every 10 steps)
  auto/1         the controller updating every step (the worst case, for scale)
Prints each one's median ms/step and its ratio to LoRA+ measured in this run (target <= 1.03).
Usage: python benchmarks/probe_overhead.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _timing import interleaved
from models import small_llama

import loraplus
from loraplus.autoratio import AutoRatioConfig
from loraplus.probe import FeatureUpdateProbe, layer_records, summarize_updates
from loraplus.verdicts import kind_scalars

EVERY = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 10 steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = small_llama()
    ids = torch.randint(0, 1024, (4, 64), generator=torch.Generator().manual_seed(0))
    probe = FeatureUpdateProbe(model)
    probe.recording = False
    kept: list[dict[str, object]] = []
    counter = {"probe": 0}

    region: dict[int, list[float]] = {}  # per optimizer: seconds from snapshot to measure

    def loop(opt: torch.optim.Optimizer, probing: bool = False) -> Callable[[int], None]:
        spent = region.setdefault(id(opt), [])

        def run(n: int) -> None:
            for _ in range(n):
                if probing:
                    probe.recording = counter["probe"] % EVERY == 0
                model(input_ids=ids, labels=ids).loss.backward()
                start = time.perf_counter()
                if probe.recording:
                    probe.snapshot()
                opt.step()
                if probe.recording:
                    updates = probe.measure()
                    layers = layer_records(updates)
                    kept.append({**summarize_updates(updates), "layers": layers})
                    kept.append(kind_scalars(layers))
                    probe.recording = False
                spent.append(time.perf_counter() - start)
                if probing:
                    counter["probe"] += 1
                opt.zero_grad(set_to_none=True)

        return run

    optimizers = {
        "LoRA+": loraplus.create_optimizer(model, "adamw", lr=1e-4, ratio=16),
        "+ probe/10": loraplus.create_optimizer(model, "adamw", lr=1e-4, ratio=16),
        "auto/10": loraplus.create_optimizer(model, "adamw", lr=1e-4, ratio="auto"),
        "auto/1": loraplus.create_optimizer(
            model, "adamw", lr=1e-4, ratio="auto", auto_ratio=AutoRatioConfig(every=1)
        ),
    }
    variants = {name: loop(opt, name == "+ probe/10") for name, opt in optimizers.items()}
    for run in variants.values():
        run(EVERY)  # warm-up: allocator, optimizer state
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    for name in interleaved(list(variants), args.rounds, rotate=True):  # who goes first rotates
        start = time.perf_counter()
        variants[name](EVERY)
        per_step[name].append((time.perf_counter() - start) / EVERY)
    probe.remove()
    base = statistics.median(per_step["LoRA+"])
    base_region = statistics.mean(region[id(optimizers["LoRA+"])][EVERY:])
    print(
        f"small Llama (hidden 256, 4 layers, LoRA r=8, 28 layers), batch 4 x 64 tokens, "
        f"{args.rounds} rounds x {EVERY} steps per variant, {args.threads} thread(s)"
    )
    print("  variant      median ms/step  ratio to LoRA+   step region ms  extra, % of a step")
    for name, times in per_step.items():
        med = statistics.median(times)
        spent = statistics.mean(region[id(optimizers[name])][EVERY:])  # without the warm-up
        extra = 100 * (spent - base_region) / base
        print(
            f"  {name:<11} {med * 1e3:14.2f}  {med / base:14.3f}  {spent * 1e3:15.2f}"
            f"  {extra:+17.2f}"
        )
    print(
        "target: probe/10 and auto/10 <= 1.03. The step region (snapshot + optimizer.step + "
        "measure; forward and backward excluded) isolates their extra work from the noise of "
        "the forward/backward pass; the probe's forward hooks are outside it."
    )


if __name__ == "__main__":
    main()
