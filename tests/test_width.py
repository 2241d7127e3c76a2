"""Width-scaling check: slope fit, a tiny end-to-end scan and its outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from loraplus.experiments.width import (
    WidthConfig,
    fit_loglog_slope,
    run_width,
    summary_lines,
    write_width_outputs,
)


def test_fit_recovers_known_slopes() -> None:
    n = np.array([64, 128, 256, 512, 1024, 2048])
    for slope in (-1.0, 0.0, 0.5):
        got, intercept = fit_loglog_slope(n, 3.0 * n**slope)
        assert got == pytest.approx(slope, abs=1e-12)
        assert intercept == pytest.approx(math.log2(3.0), abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = 0.1 * n**-1.0 * 2 ** rng.uniform(-0.5, 0.5, n.size)  # grid-like ±half-octave noise
    assert fit_loglog_slope(n, noisy)[0] == pytest.approx(-1.0, abs=0.35)
    with pytest.raises(ValueError):
        fit_loglog_slope([64], [1.0])


def test_grid_spacing_and_validation() -> None:
    cfg = WidthConfig(gd_log2_range=[-4.0, 0.0, -2.0, 1.0], adam_log2_range=[-3, -1, -3, -1])
    lr_a, lr_b = cfg.grid("gd")
    assert np.allclose(np.log2(lr_a), [-4, -3, -2, -1, 0])
    assert np.allclose(np.log2(lr_b), [-2, -1, 0, 1])
    with pytest.raises(ValueError, match="--widths needs at least two"):
        WidthConfig(widths=[64])
    with pytest.raises(ValueError, match="--gd-log2-range takes 4 values"):
        WidthConfig(optimizers=["gd"], gd_log2_range=[-4.0, 0.0])
    with pytest.raises(ValueError, match="--optimizers takes gd and/or adam"):
        WidthConfig(optimizers=["sgd"])


@pytest.mark.parametrize("setup", ["paper", "init1"])
def test_tiny_scan_end_to_end(tmp_path: Path, setup: str) -> None:
    cfg = WidthConfig(
        setup=setup,  # type: ignore[arg-type]
        widths=[8, 16, 32],
        seeds=[0, 1],
        steps=6,
        n_train=24,
        n_test=8,
        log2_step=2.0,
        gd_log2_range=[-6.0, 2.0, -6.0, 2.0],
        adam_log2_range=[-8.0, 0.0, -8.0, 0.0],
        progress=False,
    )
    res = run_width(cfg)
    assert len(res.runs) == 2 * 2 * 3
    for run in res.runs:
        lr_a, lr_b = cfg.grid(run["optimizer"])
        assert run["lr_a"] in lr_a and run["lr_b"] in lr_b
    for opt in ("gd", "adam"):
        fit = res.fits[opt]
        assert fit["seeds_fitted"] == [0, 1]
        per_seed = fit["slope_lr_a"]["per_seed"]
        assert len(per_seed) == 2
        assert fit["slope_lr_a"]["mean"] == pytest.approx(np.mean(per_seed))
        assert fit["slope_ratio"]["mean"] == pytest.approx(
            fit["slope_lr_b"]["mean"] - fit["slope_lr_a"]["mean"], abs=1e-9
        )
        assert fit["paper_theory"]["lr_a"] == -1.0
    assert len(summary_lines(res)) == 2
    paths = write_width_outputs(res, tmp_path)
    data = json.loads((tmp_path / "width.json").read_text())
    assert len(data["runs"]) == 12 and set(data["fits"]) == {"gd", "adam"}
    img = imread(tmp_path / "width.png")
    assert img.ndim == 3 and img.shape[1] > 300
    assert {p.name for p in paths} == {"width.json", "width.png"}
    assert data["config"]["setup"] == setup


def test_width_runs_the_toy_setup_it_names() -> None:
    from loraplus.experiments.toy import run_toy
    from loraplus.experiments.toy_result import ToyConfig, best

    cfg = WidthConfig(
        setup="paper",
        widths=[8, 16],
        seeds=[3],
        optimizers=["gd"],
        steps=5,
        n_train=16,
        n_test=8,
        log2_step=3.0,
        gd_log2_range=[-9.0, 0.0, -9.0, 0.0],
        progress=False,
    )
    res = run_width(cfg)
    lr_a, lr_b = cfg.grid("gd")
    for run in res.runs:
        toy = ToyConfig(
            setup="paper",
            n=run["n"],
            n_train=16,
            n_test=8,
            steps=5,
            early_step=5,
            lr_a=list(lr_a),
            lr_b=list(lr_b),
            seeds=[3],
            progress=False,
        )
        bp = best(run_toy(toy))
        assert (run["lr_a"], run["lr_b"], run["loss"]) == (bp.lr_a, bp.lr_b, bp.loss)
    old = WidthConfig(init="init2", widths=[8, 16])
    assert (old.setup, old.init) == ("init2", None)
    with pytest.raises(ValueError, match="--init init1 conflicts with --setup init2"):
        WidthConfig(setup="init2", init="init1")
