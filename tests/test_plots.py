"""plots.py: figures from plain data, written atomically as valid PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from loraplus import plots


def _panel(loss: np.ndarray) -> dict[str, object]:
    lrs = 2.0 ** np.arange(loss.shape[0], dtype=float)
    return {"lr_a": lrs, "lr_b": lrs[: loss.shape[1]], "loss": loss, "title": "t"}


def test_heatmap_with_diverged_cells(tmp_path: Path) -> None:
    loss = np.array([[0.3, 0.2, 0.1], [0.2, 0.05, np.inf], [0.1, np.inf, np.inf]])
    out = plots.plot_lr_heatmap(tmp_path / "sub" / "h.png", _panel(loss), suptitle="s")
    img = imread(out)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and min(img.shape[:2]) > 200
    assert sorted(p.name for p in out.parent.iterdir()) == ["h.png"]  # temp file replaced


def test_heatmap_all_diverged_and_panels(tmp_path: Path) -> None:
    dead = np.full((2, 2), np.inf)
    ok = np.array([[1.0, 2.0], [3.0, 4.0]])
    out = plots.plot_lr_heatmaps(tmp_path / "p.png", [_panel(dead), _panel(ok), _panel(ok)])
    assert imread(out).shape[0] > 300
    with pytest.raises(ValueError):
        plots.plot_lr_heatmaps(tmp_path / "e.png", [])


def test_width_scaling_plot(tmp_path: Path) -> None:
    widths = [64, 128, 256]
    panel = {
        "title": "GD",
        "widths": widths,
        "series": [
            {
                "name": "lr_A*",
                "values": [[1 / w for w in widths], [2 / w for w in widths]],
                "slope": (-1.0, 0.0),
                "theory": -1.0,
            },
            {
                "name": "lr_B*",
                "values": [[0.5, 0.5, 0.5], [0.25, 0.5, 0.5]],
                "slope": (0.2, 0.3),
                "theory": 0.0,
                "predicted": -0.5,
            },
        ],
    }
    out = plots.plot_width_scaling(tmp_path / "w.png", {"panels": [panel, panel]})
    assert imread(out).shape[1] > 500


def test_save_png_overwrites_atomically(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "f.png"
    target.write_bytes(b"old")
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    plots.save_png(fig, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_training_curves_draw_the_given_values() -> None:
    data = {
        "train_steps": list(range(1, 13)),
        "train_loss": [1.0 - 0.05 * k for k in range(12)],
        "eval_steps": [0, 6, 12],
        "eval_metric": [0.5, 0.7, None],
        "eval_loss": [0.9, 0.6, 0.4],
        "metric_name": "eval_accuracy",
        "title": "lr[lora_A]=0.001  lr[lora_B]=0.016",
    }
    fig = plots.draw_training_curves(data)
    ax_loss, ax_metric = fig.axes
    raw, smooth, eval_loss = ax_loss.lines
    assert list(raw.get_ydata()) == data["train_loss"]
    assert smooth.get_ydata()[0] == 1.0 and smooth.get_ydata()[-1] == pytest.approx(0.475)
    assert list(eval_loss.get_ydata()) == [0.9, 0.6, 0.4]
    (metric,) = ax_metric.lines
    assert list(metric.get_xdata()) == [0, 6, 12]
    np.testing.assert_array_equal(metric.get_ydata(), [0.5, 0.7, np.nan])  # None -> gap
    assert fig._suptitle is not None and fig._suptitle.get_text() == data["title"]


def test_demo_draws_one_line_per_method() -> None:
    runs = {
        "LoRA": {
            "steps": [0, 2],
            "accuracy": [0.5, 0.6],
            "train_steps": [1, 2],
            "train_loss": [0.7, 0.5],
        },
        "LoRA+": {"steps": [0, 2], "accuracy": [0.5, 0.8]},
    }
    fig = plots.draw_demo(runs, title="demo")
    ax_acc, ax_loss = fig.axes
    assert [line.get_label() for line in ax_acc.lines] == ["LoRA", "LoRA+"]
    assert list(ax_acc.lines[1].get_ydata()) == [0.5, 0.8]
    assert [line.get_label() for line in ax_loss.lines] == ["LoRA"]  # LoRA+ logged no loss
    with pytest.raises(ValueError, match="at least one run"):
        plots.draw_demo({})


def test_sweep_heatmap_draws_values_marks_and_best() -> None:
    data = {
        "lr_a": [1e-4, 4e-4],
        "y": [1.0, 16.0],
        "y_label": "ratio",
        "values": [[0.61, 0.7], [None, 0.655]],
        "states": [["complete", "complete"], ["diverged", "complete"]],
        "best": [0, 1],
        "baseline_row": 0,
        "metric": "eval_accuracy",
    }
    fig = plots.draw_sweep_heatmap(data)
    ax = fig.axes[0]
    cells = ax.collections[0].get_array()
    assert cells.mask.tolist() == [[False, True], [False, False]]  # rows: ratio; columns: lr_A
    assert sorted(float(v) for v in cells.compressed()) == pytest.approx([61.0, 65.5, 70.0])
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["61.0", "65.5", "70.0", "div"]
    best = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    (frame,) = best
    assert frame.get_x() == pytest.approx(np.log2(1e-4) - 1.0)  # cell edges at half spacing
    assert frame.get_y() == pytest.approx(2.0)  # the ratio-16 row starts midway log2 1 .. 16


def test_draw_lr_heatmap_returns_what_it_drew() -> None:
    from matplotlib.collections import QuadMesh
    from matplotlib.figure import Figure

    loss = np.array([[0.30, 0.200, 0.1000], [0.2, 0.1005, np.inf], [0.10, np.inf, np.nan]])
    fig = Figure()
    ax = fig.add_subplot()
    drawn = plots.draw_lr_heatmap(
        fig, ax, {**_panel(loss), "reference": [{"lr_a": 2.0, "lr_b": 1.0, "label": "paper"}]}
    )
    assert drawn.best == (0, 2)
    # 1% band around 0.1: (0, 2), (1, 1) (0.1005) and (2, 0); never a diverged cell
    assert sorted(map(tuple, drawn.band.tolist())) == [(0, 2), (1, 1), (2, 0)]
    assert sorted(map(tuple, drawn.diverged.tolist())) == [(1, 2), (2, 1), (2, 2)]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    plotted = np.ma.getdata(mesh.get_array()).reshape(3, 3)  # rows are lr_B (transposed)
    shown = ~np.ma.getmaskarray(mesh.get_array()).reshape(3, 3)
    np.testing.assert_array_equal(plotted[shown], loss.T[np.isfinite(loss.T)])
    plus = next(ln for ln in ax.lines if ln.get_marker() == "+")
    np.testing.assert_array_equal(plus.get_xdata(), [0.0, 1.0, 2.0])  # log2(lr_A) of the band
    star = next(ln for ln in ax.lines if ln.get_marker() == "*")
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (1.0, 0.0)
    assert star.get_label() == "paper"
    narrow = plots.draw_lr_heatmap(fig, fig.add_subplot(2, 1, 2), _panel(loss), margin=0.001)
    assert sorted(map(tuple, narrow.band.tolist())) == [(0, 2), (2, 0)]
