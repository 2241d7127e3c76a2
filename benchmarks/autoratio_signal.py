"""Does the hook-free signal of ratio="auto" track the paper's δ¹/δ², and how does it scale with n?

On the LoRA MLP teacher-student (loraplus.experiments.lora_mlp, Adam, lr_A 1e-3, 300 steps) at
several widths n, with the ratio fixed at 1, 16, 256 and with ratio="auto":
  true   log2(δ²/δ¹) from FeatureUpdateProbe (the real inputs z of the step), median over layers
  proxy  log2(‖ΔB·A‖_F / ‖B·ΔA‖_F), what the controller sees (isotropic inputs), same step
every 50 steps. Prints the late (steps 150-300) medians, the slope of the balance against log2
ratio, and the ratio "auto" settles at, with its log-log slope against n (the theory: δ²/δ¹ ~
ratio / n for Adam when the inputs align with the update, so balance needs ratio ~ n; for
isotropic inputs the proxy's δ¹ grows as √n only).
Usage: python benchmarks/autoratio_signal.py [--widths 64,256,1024] [--seeds 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import loraplus
from loraplus.autoratio import AutoRatioConfig, isotropic_terms, lora_pairs
from loraplus.experiments.lora_mlp import batches, teacher_student
from loraplus.experiments.width import fit_loglog_slope
from loraplus.probe import FeatureUpdateProbe

RATIOS: tuple[float | str, ...] = (1.0, 16.0, 256.0, "auto", "auto-inputs")


def run(n: int, ratio: float | str, seed: int, steps: int = 300) -> dict[str, float]:
    """Late medians of the true and proxy balance, the final loss and (auto) the mean ratio."""
    model, teacher = teacher_student(n, seed)
    kind = "auto" if str(ratio).startswith("auto") else ratio
    extra = {"auto_ratio": AutoRatioConfig(signal="inputs")} if ratio == "auto-inputs" else {}
    opt: Any = loraplus.create_optimizer(model, "adamw", lr=1e-3, ratio=kind, **extra)
    probe, pairs, data = FeatureUpdateProbe(model), lora_pairs(model), batches(n, seed=7 + seed)
    true, proxy, loss = [], [], math.nan
    for t in range(1, steps + 1):
        record = t % 50 == 0 and t >= 150
        probe.recording = record
        x = next(data)
        err = (model(x) - teacher(x)).pow(2).mean()
        err.backward()
        if record:
            probe.snapshot()
            before = [(p.a.detach().clone(), p.b.detach().clone()) for p in pairs]
        opt.step()
        opt.zero_grad()
        if record:
            true += [u.balance for u in probe.measure()]
            for p, (a0, b0) in zip(pairs, before, strict=True):
                d1, d2 = isotropic_terms(a0, b0, p.a, p.b).tolist()
                proxy.append(math.log2(d2 / d1))
        loss = float(err.detach())
    probe.remove()
    out = {"true": statistics.median(true), "proxy": statistics.median(proxy), "loss": loss}
    if kind == "auto":
        ratios = opt.ratios().values()
        out["ratio"] = 2 ** statistics.mean(math.log2(v) for v in ratios)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = [int(w) for w in args.widths.split(",")]
    start = time.perf_counter()
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    print("   n        ratio  true log2(δ²/δ¹)  proxy  proxy-true  final loss  ratio chosen")
    for n in widths:
        for ratio in RATIOS:
            rows = [run(n, ratio, seed) for seed in range(args.seeds)]
            results[(n, str(ratio))] = rows
            mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
            chosen = f"{mean['ratio']:12.2f}" if "ratio" in mean else ""
            print(
                f"{n:4d}  {ratio!s:>11}  {mean['true']:+16.2f}  {mean['proxy']:+5.2f}"
                f"  {mean['proxy'] - mean['true']:+10.2f}  {mean['loss']:10.4f}  {chosen}",
                flush=True,
            )
    print("slope of the balance against log2(ratio), fixed ratios 1 -> 256:")
    for n in widths:
        ends = [statistics.mean(r["true"] for r in results[(n, str(q))]) for q in (1.0, 256.0)]
        ends_p = [statistics.mean(r["proxy"] for r in results[(n, str(q))]) for q in (1.0, 256.0)]
        print(
            f"  n={n}: true {(ends[1] - ends[0]) / 8:.2f}, proxy {(ends_p[1] - ends_p[0]) / 8:.2f}"
        )
    for name in ("auto", "auto-inputs"):
        chosen = [statistics.mean(r["ratio"] for r in results[(n, name)]) for n in widths]
        if len(widths) > 1:
            slope, _ = fit_loglog_slope(widths, chosen)
            print(f"ratio chosen by {name} ~ n^{slope:.2f} (theory for balanced true δ: n^1)")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
