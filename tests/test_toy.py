"""Toy experiment: the vectorized grid equals direct training, divergence, best point, outputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from loraplus.experiments.toy import (
    ToyConfig,
    best,
    format_best,
    log2_grid,
    make_problem,
    read_toy_json,
    run_toy,
    train_single,
    write_toy_outputs,
)

LOSS_KEYS = ("train_early", "test_early", "train_final", "test_final")


def tiny(**kw: object) -> ToyConfig:
    base: dict[str, object] = dict(
        n=16,
        n_train=40,
        n_test=12,
        steps=12,
        early_step=4,
        lr_a=log2_grid(-6, 6, 4),
        lr_b=log2_grid(-6, 6, 4),
        dtype="float64",
        progress=False,
    )
    base.update(kw)
    return ToyConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
@pytest.mark.parametrize("init", ["init1", "init2"])
def test_every_grid_cell_equals_a_direct_run(optimizer: str, init: str) -> None:
    cfg = tiny(optimizer=optimizer, init=init)
    res = run_toy(cfg)
    finite_cells = 0
    for i, la in enumerate(cfg.lr_a):
        for j, lb in enumerate(cfg.lr_b):
            ref = train_single(cfg, la, lb)
            assert res.diverged_step[i, j] == ref.diverged_step
            for key in LOSS_KEYS:
                got, want = getattr(res, key)[i, j], getattr(ref, key)
                if math.isinf(want):
                    assert math.isinf(got)
                else:
                    finite_cells += 1
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-14)
    assert finite_cells >= 4 * 4  # several cells trained to the end, compared at both stages
    assert res.diverged.any()  # the grid reaches 2^6: some cells must blow up


def test_float32_grid_close_to_float64_direct_run() -> None:
    cfg = tiny(dtype="float32", lr_a=(0.5,), lr_b=(0.25,))
    res = run_toy(cfg)
    ref = train_single(tiny(lr_a=(0.5,), lr_b=(0.25,)), 0.5, 0.25)
    assert res.train_final[0, 0] == pytest.approx(ref.train_final, rel=1e-4)
    assert ref.train_final < 0.9 * ref.train_losses[0]  # it actually learned


def test_training_lowers_the_loss_and_moves_both_matrices() -> None:
    cfg = tiny(lr_a=(2.0**-3,), lr_b=(2.0**-1,), steps=30)
    ref = train_single(cfg, 2.0**-3, 2.0**-1)
    assert ref.train_losses[-1] < 0.5 * ref.train_losses[0]
    assert not ref.diverged


def test_huge_lr_is_flagged_diverged_and_kept() -> None:
    cfg = tiny(lr_a=(1e-3, 1e6), lr_b=(1e-3, 1e6))
    res = run_toy(cfg)
    assert res.train_final.shape == (2, 2)
    assert res.diverged[1, 1] and res.diverged_step[1, 1] >= 0
    assert math.isinf(res.train_final[1, 1]) and math.isinf(res.test_final[1, 1])
    assert not res.diverged[0, 0] and math.isfinite(res.train_final[0, 0])
    for key in LOSS_KEYS:  # frozen cells never leak NaN into the record
        assert not np.isnan(getattr(res, key)).any()


def test_init_schemes_start_from_zero_product() -> None:
    for init in ("init1", "init2"):
        p = make_problem(tiny(init=init))
        assert float((p.b0 @ p.a0).abs().max()) == 0.0
        nonzero = p.a0 if init == "init1" else p.b0
        assert float(nonzero.abs().max()) > 0


def test_best_is_the_argmin_and_the_line_format() -> None:
    res = run_toy(tiny())
    for stage in ("early", "final"):
        for split in ("train", "test"):
            loss = res.loss(stage, split)  # type: ignore[arg-type]
            bp = best(res, stage, split)  # type: ignore[arg-type]
            assert bp.loss == np.min(loss[np.isfinite(loss)])
            assert loss[bp.i, bp.j] == bp.loss
            assert (bp.lr_a, bp.lr_b) == (res.lr_a[bp.i], res.lr_b[bp.j])
            diag = [loss[k, k] for k in range(len(res.lr_a))]
            assert bp.diag_loss == min(diag)
    line = format_best(best(res))
    num = r"[0-9.e+-]+|inf|n/a"
    pattern = (
        rf"best lr_A=({num}) lr_B=({num}) ratio=({num}) loss=({num}); "
        rf"best on diagonal lr=({num}) loss=({num})"
    )
    m = re.fullmatch(pattern, line)
    assert m, line
    bp = best(res)
    assert float(m.group(3)) == pytest.approx(bp.lr_b / bp.lr_a, rel=1e-3)


def test_best_raises_when_every_cell_diverged() -> None:
    res = run_toy(tiny(lr_a=(1e8,), lr_b=(1e8,)))
    assert res.diverged.all()
    with pytest.raises(ValueError, match="diverged"):
        best(res)


def test_outputs_json_round_trip_and_pngs(tmp_path: Path) -> None:
    res = run_toy(tiny())
    paths = write_toy_outputs(res, tmp_path)
    data = json.loads((tmp_path / "toy.json").read_text())
    assert len(data["cells"]) == 16
    assert {(c["i"], c["j"]) for c in data["cells"]} == {(i, j) for i in range(4) for j in range(4)}
    assert data["lr_a"] == list(res.lr_a) and data["lr_b"] == list(res.lr_b)
    assert data["best"]["train_final"]["line"] == format_best(best(res))
    back = read_toy_json(tmp_path / "toy.json")
    for key in LOSS_KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(res, key))
    np.testing.assert_array_equal(back.diverged, res.diverged)
    assert back.config == res.config
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {
        f"toy_{sp}_{st}.png" for sp in ("train", "test") for st in ("early", "final")
    }
    for p in pngs:
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="early_step"):
        ToyConfig(steps=5, early_step=10)
    with pytest.raises(ValueError, match="init"):
        ToyConfig(init="kaiming")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        ToyConfig(lr_a=(0.0,))


def test_log2_grid() -> None:
    g = log2_grid(-3, 1, 5)
    assert g == (0.125, 0.25, 0.5, 1.0, 2.0)
    assert log2_grid(2, 2, 1) == (4.0,)
