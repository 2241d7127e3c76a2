"""Regenerate docs/figures/toy/<variant>/ and docs/figures/width/<setup>/ with the Python API.

Usage: PYTHONPATH=src python docs/figures/toy/generate.py toy paper-mse paper-broadcast init1 init2
       PYTHONPATH=src python docs/figures/toy/generate.py width paper init1 init2
       PYTHONPATH=src python docs/figures/toy/generate.py render paper-mse  (figures from toy.json)
COMMANDS.md gives the equivalent `loraplus experiment ...` command line of each output.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from loraplus.experiments.toy import run_toy
from loraplus.experiments.toy_io import read_toy_json, write_toy_outputs
from loraplus.experiments.toy_result import ToyConfig, best, format_best
from loraplus.experiments.width import WidthConfig, run_width, summary_lines, write_width_outputs

ROOT = Path(__file__).resolve().parents[1]
TOY = {
    "paper-mse": {"setup": "paper", "loss": "mse"},
    "paper-broadcast": {"setup": "paper", "loss": "broadcast"},
    "init1": {"setup": "init1", "loss": "mse"},
    "init2": {"setup": "init2", "loss": "mse"},
}
WIDTHS = [64, 128, 256, 512, 1024]  # 2048 cut: it alone costs as much as all the others
WIDTH_EXTRA = {"paper": {"gd_log2_range": [-13.0, 3.0, -16.0, 2.0]}}  # GD lr_A* < 2^-8 at n=1024


def toy(variant: str) -> None:
    """One toy variant: 46 x 46 grid over [1e-4, 10], 3 seeds averaged, GD, 200 steps."""
    cfg = ToyConfig(**TOY[variant], seeds=[0, 1, 2], progress=False)  # type: ignore[arg-type]
    res = run_toy(cfg)
    write_toy_outputs(res, ROOT / "toy" / variant)
    print(f"{variant}: {res.seconds:.0f} s")
    for st in ("early", "final"):
        for sp in ("train", "test"):
            print(f"  {st:5s} {sp:5s} {format_best(best(res, st, sp))}")  # type: ignore[arg-type]


def width(setup: str) -> None:
    """One width scan: n = 64 ... 1024, 3 seeds, GD and Adam, 50 steps."""
    extra = WIDTH_EXTRA.get(setup, {})
    cfg = WidthConfig(setup=setup, widths=WIDTHS, progress=False, **extra)  # type: ignore[arg-type]
    res = run_width(cfg)
    write_width_outputs(res, ROOT / "width" / setup)
    print(f"width {setup}: {res.seconds:.0f} s")
    print("\n".join(summary_lines(res)))


def render(variant: str) -> None:
    """Redraw one toy variant's figures (and rewrite its toy.json) from its toy.json."""
    folder = ROOT / "toy" / variant
    write_toy_outputs(read_toy_json(folder / "toy.json"), folder)


if __name__ == "__main__":
    kind, names = sys.argv[1], sys.argv[2:]
    for name in names:
        t = time.perf_counter()
        {"toy": toy, "width": width, "render": render}[kind](name)
        print(f"  wall {time.perf_counter() - t:.0f} s", flush=True)
