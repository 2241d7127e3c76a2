"""Toy experiment: the vectorized grid equals direct training, divergence, best point, outputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from loraplus.experiments._toygrid import make_target
from loraplus.experiments.toy import make_problem, run_toy, toy_loss, train_single
from loraplus.experiments.toy_io import read_toy_json, write_toy_outputs
from loraplus.experiments.toy_result import (
    ToyConfig,
    band,
    best,
    format_best,
    log2_grid,
    log_grid,
    seed_result,
)

LOSS_KEYS = ("train_early", "test_early", "train_final", "test_final")


def tiny(**kw: object) -> ToyConfig:
    base: dict[str, object] = dict(
        setup="init1",
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


PAPER_LRS = log2_grid(-10, 2, 4)  # the paper's init (B ~ N(0, 1)) diverges from lr 2^-2 on


def assert_grid_equals_direct_runs(cfg: ToyConfig, seed: int | None = None) -> int:
    """Every cell of run_toy(cfg) (one seed) equals train_single; returns the finite comparisons."""
    res = run_toy(cfg)
    finite = 0
    for i, la in enumerate(cfg.lrs_a):
        for j, lb in enumerate(cfg.lrs_b):
            ref = train_single(cfg, la, lb, seed)
            assert res.diverged_step[i, j] == ref.diverged_step
            for key in LOSS_KEYS:
                got, want = getattr(res, key)[i, j], getattr(ref, key)
                if math.isinf(want):
                    assert math.isinf(got)
                else:
                    finite += 1
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-14)
    assert res.diverged.any()  # the grid reaches large lrs: some cells must blow up
    return finite


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
@pytest.mark.parametrize("setup", ["init1", "init2", "paper"])
def test_every_grid_cell_equals_a_direct_run(optimizer: str, setup: str) -> None:
    lrs = PAPER_LRS if setup == "paper" else log2_grid(-6, 6, 4)
    cfg = tiny(optimizer=optimizer, setup=setup, lr_a=lrs, lr_b=lrs)
    assert assert_grid_equals_direct_runs(cfg) >= 4 * 4  # cells compared at both stages


@pytest.mark.parametrize("setup", ["paper", "init1"])
def test_broadcast_grid_cells_equal_direct_runs_on_another_seed(setup: str) -> None:
    lrs = PAPER_LRS if setup == "paper" else log2_grid(-6, 6, 4)
    cfg = tiny(setup=setup, loss="broadcast", seeds=[7], lr_a=lrs, lr_b=lrs)
    assert assert_grid_equals_direct_runs(cfg, seed=7) >= 4 * 4


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
        p = make_problem(tiny(setup=init))
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
    res = run_toy(tiny(seeds=[0, 1], loss="broadcast"))
    paths = write_toy_outputs(res, tmp_path)
    data = json.loads((tmp_path / "toy.json").read_text())
    cfg = data["config"]
    assert (cfg["setup"], cfg["seeds"], cfg["loss"]) == ("init1", [0, 1], "broadcast")
    assert "hypothesis" in data["loss_note"] and "not the paper's stated loss" in data["loss_note"]
    for k, per_seed in enumerate(data["best_per_seed"]):
        own = best(seed_result(res, k))
        assert per_seed["seed"] == k and per_seed["best"]["train_final"]["line"] == format_best(own)
    near = data["best"]["train_final"]["near_best"]
    assert sorted(map(tuple, near)) == sorted(map(tuple, band(res).tolist()))
    assert len(data["cells"]) == 16
    assert {(c["i"], c["j"]) for c in data["cells"]} == {(i, j) for i in range(4) for j in range(4)}
    assert data["lr_a"] == list(res.lr_a) and data["lr_b"] == list(res.lr_b)
    assert data["best"]["train_final"]["line"] == format_best(best(res))
    back = read_toy_json(tmp_path / "toy.json")
    for key in LOSS_KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(res, key))
    np.testing.assert_array_equal(back.diverged, res.diverged)
    assert back.config == res.config
    for key in LOSS_KEYS:  # per-seed grids are stored to 6 significant digits
        np.testing.assert_allclose(back.seed_losses[key], res.seed_losses[key], rtol=1e-5)
    np.testing.assert_array_equal(back.seed_diverged_step, res.seed_diverged_step)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {
        f"toy_{sp}_{st}.png" for sp in ("train", "test") for st in ("early", "final")
    }
    for p in pngs:
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="--early-step"):
        ToyConfig(steps=5, early_step=10)
    with pytest.raises(ValueError, match="init"):
        ToyConfig(init="kaiming")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        ToyConfig(lr_a=(0.0,))


def test_log2_grid() -> None:
    g = log2_grid(-3, 1, 5)
    assert g == (0.125, 0.25, 0.5, 1.0, 2.0)
    assert log2_grid(2, 2, 1) == (4.0,)


def test_broadcast_loss_equals_its_definition_on_a_hand_example() -> None:
    f, y = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])
    # pairs (f_i - y_j)^2: (1-0)^2 = 1, (1-3)^2 = 4, (2-0)^2 = 4, (2-3)^2 = 1 -> mean 10/4
    assert float(toy_loss(f, y, "broadcast")) == 2.5
    assert float(toy_loss(f, y, "mse")) == 1.0  # ((1-0)^2 + (2-3)^2) / 2
    t = make_target(y, "broadcast")  # the grid's form: mean_i (f_i - mean y)^2 + Var(y)
    assert float((f - t.t).pow(2).mean()) + t.offset == 2.5  # 0.25 + 2.25
    with pytest.raises(ValueError, match="mse"):
        toy_loss(f, y, "l1")  # type: ignore[arg-type]


def test_broadcast_loss_never_goes_below_var_y() -> None:
    cfg = tiny(setup="paper", loss="broadcast", lr_a=PAPER_LRS, lr_b=PAPER_LRS)
    res = run_toy(cfg)
    p = make_problem(cfg)
    var_tr, var_te = float(p.y_train.var(unbiased=False)), float(p.y_test.var(unbiased=False))
    for stage in ("early", "final"):
        assert np.all(res.loss(stage, "train") >= var_tr)  # type: ignore[arg-type]
        assert np.all(res.loss(stage, "test") >= var_te)  # type: ignore[arg-type]
    mse = run_toy(tiny(setup="paper", lr_a=PAPER_LRS, lr_b=PAPER_LRS))
    assert np.nanmin(np.where(np.isfinite(mse.train_final), mse.train_final, np.nan)) < var_tr


def test_paper_setup_draws_the_printed_scales() -> None:
    cfg = ToyConfig(setup="paper", n=400, d=5, r=4, progress=False)
    p, p1 = make_problem(cfg), make_problem(ToyConfig(setup="init1", n=400, progress=False))
    torch.testing.assert_close(p.w_in, p1.w_in * math.sqrt(5))  # W_in ~ N(0, 1) vs N(0, 1/d)
    torch.testing.assert_close(p.a0, p1.a0)  # A ~ N(0, 1/n) in both
    assert float(p.w_in.std()) == pytest.approx(1.0, abs=0.06)
    assert float(p.a0.std()) * math.sqrt(400) == pytest.approx(1.0, abs=0.06)
    assert float(p.b0.std()) == pytest.approx(1.0, abs=0.06)  # B ~ N(0, 1)
    assert float(p.w_out.std()) * math.sqrt(400) == pytest.approx(1.0, abs=0.1)
    assert float((p.b0 @ p.a0).abs().max()) > 0  # neither Init[1] nor Init[2]


def test_default_grid_is_46_log_spaced_values_holding_the_papers_numbers() -> None:
    lrs = ToyConfig(progress=False).lrs_a
    assert len(lrs) == 46 and lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(10.0)
    np.testing.assert_allclose(np.diff(np.log10(lrs)), 1 / 9)
    for printed in (2.78, 1.29e-4, 2.15e-2):  # caption optimum and best diagonal cell
        assert min(abs(v / printed - 1) for v in lrs) < 0.005
    short = ToyConfig(num_lrs=6, progress=False)
    assert short.lrs_a == short.lrs_b == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])
    assert log_grid(1.0, 4.0, 3) == pytest.approx([1.0, 2.0, 4.0])


def test_seeds_are_averaged_before_the_best_cell_and_each_seed_keeps_its_own() -> None:
    res = run_toy(tiny(seeds=[0, 1]))
    one = [run_toy(tiny(seeds=[s])) for s in (0, 1)]
    for key in LOSS_KEYS:
        want = (getattr(one[0], key) + getattr(one[1], key)) / 2  # inf if either diverged
        np.testing.assert_allclose(getattr(res, key), want, rtol=1e-12)
        for k in (0, 1):
            np.testing.assert_array_equal(getattr(seed_result(res, k), key), getattr(one[k], key))
    np.testing.assert_array_equal(res.diverged, one[0].diverged | one[1].diverged)
    bp = best(res)
    assert bp.loss == pytest.approx(float(np.min((one[0].train_final + one[1].train_final) / 2)))
    assert best(seed_result(res, 1)) == best(one[1])
    cfg1 = tiny(seeds=[1])
    ref = train_single(cfg1, cfg1.lrs_a[0], cfg1.lrs_b[0])  # default seed: cfg.seeds[0]
    assert one[1].train_final[0, 0] == pytest.approx(ref.train_final, rel=1e-9)


def test_band_is_every_cell_within_margin() -> None:
    res = run_toy(tiny(margin=0.5))
    loss = res.train_final
    got = {tuple(c) for c in band(res).tolist()}
    lowest = float(np.min(loss[np.isfinite(loss)]))
    want = {(i, j) for i, j in np.ndindex(loss.shape) if loss[i, j] <= 1.5 * lowest}
    assert got == want and len(got) >= 2


def test_old_field_names_still_work_and_conflicts_are_named() -> None:
    cfg = ToyConfig(init="init2", seed=3, progress=False)
    assert (cfg.setup, cfg.seeds, cfg.init, cfg.seed) == ("init2", [3], None, None)
    with pytest.raises(ValueError, match="--init init1 conflicts with --setup init2"):
        ToyConfig(setup="init2", init="init1")
    with pytest.raises(ValueError, match="--seed 3 conflicts with --seeds"):
        ToyConfig(seeds=[1, 2], seed=3)
    with pytest.raises(ValueError, match="--seeds must be distinct"):
        ToyConfig(seeds=[1, 1])
    with pytest.raises(ValueError, match="--loss"):
        ToyConfig(loss="l1")  # type: ignore[arg-type]


def test_every_field_is_a_flag_of_hf_argument_parser() -> None:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ToyConfig)
    argv = ["--setup", "paper", "--seeds", "0", "1", "2", "--loss", "broadcast", "--num-lrs", "5"]
    (cfg,) = parser.parse_args_into_dataclasses([*argv, "--no-progress"])
    assert (cfg.setup, cfg.seeds, cfg.loss, cfg.progress) == (
        "paper",
        [0, 1, 2],
        "broadcast",
        False,
    )
    assert cfg.lrs_a == pytest.approx(log_grid(1e-4, 10.0, 5))
    (cfg,) = parser.parse_args_into_dataclasses(["--lr-a", "0.1", "0.2", "--init", "init1"])
    assert (cfg.lrs_a, cfg.setup) == ([0.1, 0.2], "init1")
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--setup", "init3"])
    helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    assert all(helps.values()), [k for k, v in helps.items() if not v]


def test_reads_a_toy_json_written_before_setups_and_seeds() -> None:
    old = Path(__file__).resolve().parent / "data" / "toy_before_setups.json"  # the 15x15 of v0.1
    res = read_toy_json(old)
    assert (res.config.setup, res.config.seeds, res.config.loss) == ("init1", [0], "mse")
    assert res.seed_losses["train_final"].shape == (1, 15, 15)
    assert best(res).lr_a == 16.0 and best(res).lr_b == pytest.approx(2.0**-9)
