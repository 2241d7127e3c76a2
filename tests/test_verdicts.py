"""loraplus.verdicts: module kinds, verdicts from probe records, metrics.json, the figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loraplus import cli
from loraplus._io import write_json
from loraplus.train.record import TrainResult, write_record
from loraplus.verdicts import (
    BALANCED_LOG2,
    draw_probe,
    format_balance,
    judge,
    kind_scalars,
    module_kind,
    probe_figure,
    read_probe_records,
    verdicts,
)

PREFIX = "base_model.model.model.layers.0."


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (PREFIX + "self_attn.q_proj", "q"),
        (PREFIX + "self_attn.k_proj", "k"),
        (PREFIX + "self_attn.v_proj", "v"),
        (PREFIX + "self_attn.o_proj", "o"),
        (PREFIX + "mlp.gate_proj", "mlp"),
        (PREFIX + "mlp.down_proj", "mlp"),
        ("bert.encoder.layer.0.attention.self.query", "q"),
        ("bert.encoder.layer.0.attention.output.dense", "o"),
        ("bert.encoder.layer.0.intermediate.dense", "mlp"),
        ("bert.encoder.layer.0.output.dense", "mlp"),
        ("transformer.h.0.attn.c_attn", "qkv"),
        ("transformer.h.0.attn.c_proj", "o"),
        ("transformer.h.0.mlp.c_proj", "mlp"),
        ("encoder.block.0.layer.1.DenseReluDense.wo", "mlp"),
        ("encoder.block.0.layer.0.SelfAttention.o", "o"),
        ("bert.pooler.dense", "other"),
        ("classifier", "other"),
    ],
)
def test_module_kind(name: str, kind: str) -> None:
    assert module_kind(name) == kind


def record(probe: Any) -> dict[str, Any]:
    """A run record's JSON as `loraplus train` writes it, holding these probe rows."""
    return {"history": [], "final": {}, "diverged": False, "feature_updates": probe}


def rec(layer: str, d1: float, d2: float) -> dict[str, Any]:
    """A per-layer record as the probe writes it (balance None when δ¹ or δ² is 0)."""
    balance = math.log2(d2 / d1) if d1 > 0 and d2 > 0 else None
    return {
        "layer": layer,
        "adapter": "default",
        "delta_a": d1,
        "delta_b": d2,
        "balance_log2": balance,
    }


def rows() -> list[dict[str, Any]]:
    """4 probed steps; q balanced, v with B lagging, mlp with A lagging; step 1 from B = 0."""
    out = []
    for t, step in enumerate((1.0, 11.0, 21.0, 31.0)):
        first = t == 0
        layers = [
            rec(PREFIX + "self_attn.q_proj", 0.0 if first else 1.0, 2.0),  # +1
            rec(PREFIX.replace("0.", "1.") + "self_attn.q_proj", 0.0 if first else 2.0, 1.0 + t),
            rec(PREFIX + "self_attn.v_proj", 0.0 if first else 64.0, 1.0),  # -6
            rec(PREFIX + "mlp.up_proj", 0.0 if first else 1.0, 2.0 ** (3 + t)),  # +5, +6 late
        ]
        out.append(
            {"step": step, "delta_a": 0.0, "delta_b": 1.0, "balance_log2": None, "layers": layers}
        )
    return out


def test_verdicts_by_hand() -> None:
    got = {v.kind: v for v in verdicts(rows())}
    assert list(got) == ["q", "v", "mlp"]
    q = got["q"]  # late half: steps 21, 31; balances 1, 1, log2(3/2), 1
    assert q.steps == (21.0, 31.0) and q.layers == 2
    assert q.balance_log2 == pytest.approx(1.0)
    assert q.delta_a == pytest.approx(1.5) and q.delta_b == pytest.approx(
        2.5
    )  # (1,2,1,2), (2,3,2,4)
    assert q.verdict == "balanced"
    assert got["v"].balance_log2 == pytest.approx(-6.0)
    assert got["v"].verdict == "B barely learns: raise the ratio"
    assert got["mlp"].balance_log2 == pytest.approx(5.5)  # median of 5 and 6
    assert got["mlp"].verdict == "A barely learns: lower the ratio"
    assert (
        got["mlp"]
        .line()
        .startswith("mlp   A barely learns: lower the ratio: median log2(δ²/δ¹) +5.5")
    )


def test_a_frozen_kind_and_the_first_init1_step() -> None:
    frozen = [{"step": float(s), "layers": [rec("m.q_proj", 0.0, 1.0)]} for s in (1, 2)]
    (v,) = verdicts(frozen)
    assert v.balance_log2 == math.inf and v.verdict == "A barely learns: lower the ratio"
    assert "log2(δ²/δ¹) n/a" in v.line()
    first_step = verdicts(rows()[:1])  # Init[1]'s first step alone: δ¹ = 0 everywhere
    assert [v.balance_log2 for v in first_step] == [math.inf] * 3
    assert judge(None) == "no data" and judge(BALANCED_LOG2) == "balanced"
    assert judge(-BALANCED_LOG2 - 0.01) == "B barely learns: raise the ratio"
    assert format_balance(None) == format_balance(math.nan) == format_balance(-math.inf) == "n/a"
    assert format_balance(1.25) == "+1.2"


def test_kind_scalars_are_medians_per_kind() -> None:
    scalars = kind_scalars(rows()[1]["layers"])
    assert scalars["probe/q/balance_log2"] == pytest.approx((1.0 + 0.0) / 2)  # log2(2/1), log2(2/2)
    assert scalars["probe/v/delta_a"] == 64.0 and scalars["probe/mlp/balance_log2"] == 4.0
    assert "probe/q/balance_log2" not in kind_scalars(rows()[0]["layers"])  # δ¹ = 0: no balance


def test_metrics_json_round_trip(tmp_path: Path) -> None:
    data = rows()
    data[0]["layers"][0]["balance_log2"] = math.inf  # in memory a probe may hold ±inf; JSON: null
    write_record(TrainResult([], {}, tmp_path, False, feature_updates=data))
    read = read_probe_records(tmp_path)
    assert read[0]["layers"][0]["balance_log2"] is None
    assert verdicts(read) == verdicts(rows())
    assert verdicts(read_probe_records(tmp_path / "metrics.json")) == verdicts(rows())
    write_json(tmp_path / "medians" / "metrics.json", record([{"step": 1.0}]))
    with pytest.raises(ValueError, match="no per-layer probe records; train with --probe-every"):
        read_probe_records(tmp_path / "medians")
    with pytest.raises(ValueError, match="does not exist"):
        read_probe_records(tmp_path / "nowhere")


def test_probe_figure_draws_each_layers_balance(tmp_path: Path) -> None:
    drawn = probe_figure(rows(), tmp_path / "probe.png")
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(drawn) == ["q", "v", "mlp"]
    q = drawn["q"]
    assert q["steps"] == [1.0, 11.0, 21.0, 31.0]
    first = q["balance"][PREFIX + "self_attn.q_proj"]
    assert math.isnan(first[0]) and first[1:] == [1.0, 1.0, 1.0]
    assert drawn["mlp"]["balance"][PREFIX + "mlp.up_proj"][1:] == [4.0, 5.0, 6.0]
    assert q["delta_a"] == [0.0, 1.5, 1.5, 1.5] and q["delta_b"] == [1.5, 2.0, 2.5, 3.0]


def test_a_damaged_metrics_json_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.dumps(record(rows()), indent=2)
    layer = rows()[1]["layers"][0]
    damaged = {
        "cut short": (good[: len(good) // 2], "is not valid JSON (Expecting"),
        "empty": ("", "is not valid JSON (Expecting value at line 1, column 1)"),
        "a list": ("[1, 2]", "holds a JSON list, not the object `loraplus train` writes"),
        "a number": ("3", "holds a JSON int, not the object"),
        "probe not a list": (json.dumps(record(5)), "its probe records are not a list of objects"),
        "not a record": ('{"probe": []}', "lacks diverged, final, history: it was not written"),
        "step not a number": (
            json.dumps(record([{"step": "x", "layers": [layer]}])),
            "a probe record has step 'x', not a number",
        ),
        "delta edited": (
            json.dumps(record([{"step": 1, "layers": [{**layer, "delta_b": "big"}]}])),
            "lacks a layer name or a numeric delta_b",
        ),
        "layer not an object": (
            json.dumps(record([{"step": 1, "layers": [3]}])),
            "lacks a layer name or a numeric delta_a / delta_b",
        ),
    }
    for name, (text, fragment) in damaged.items():
        run = tmp_path / name.replace(" ", "_")
        run.mkdir()
        (run / "metrics.json").write_text(text)
        assert cli.main(["diagnose", str(run)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {run / 'metrics.json'}"), err
        assert fragment in err, (name, err)
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(["diagnose", str(tmp_path / "bytes.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: Cannot read {tmp_path / 'bytes.json'}")
    write_json(tmp_path / "ok" / "metrics.json", record(rows()))
    assert cli.main(["diagnose", str(tmp_path / "ok"), "--out", str(tmp_path)]) == 2
    assert "is a folder: pass a .png file path" in capsys.readouterr().err


def test_probe_figure_states_title_verdicts_layers_and_kinds() -> None:
    fig = draw_probe(rows(), title="runs/x: minilm on rotten-tomatoes, ratio 16")
    suptitle = fig._suptitle.get_text()  # type: ignore[union-attr]
    assert suptitle.startswith("runs/x: minilm on rotten-tomatoes, ratio 16\n")
    assert "δ¹: how far A's step moved the layer's output, δ²: how far B's did" in suptitle
    left = fig.axes[0::2]
    right = fig.axes[1::2]
    assert [ax.get_title() for ax in left] == [
        "q: balanced (median +1.0)",
        "v: B barely learns: raise the ratio (median -6.0)",
        "mlp: A barely learns: lower the ratio (median +5.5)",
    ]
    assert [t.get_text() for t in left[0].get_legend().texts] == [
        "0.self_attn.q_proj",
        "1.self_attn.q_proj",
    ]
    assert [ax.get_title() for ax in right] == [
        "q: median over its 2 layers",
        "v: median over its 1 layer",
        "mlp: median over its 1 layer",
    ]
    assert [t.get_text() for t in right[0].get_legend().texts] == ["δ¹ (A's step)", "δ² (B's step)"]


def test_a_run_with_ratio_auto_is_advised_what_it_can_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loraplus import cli

    got = {v.kind: v.verdict for v in verdicts(rows(), auto=True)}
    assert (
        got["mlp"] == "A barely learns: train longer (the auto ratio falls) or fix a lower --ratio"
    )
    assert (
        got["v"] == "B barely learns: train longer (the auto ratio rises) or fix a higher --ratio"
    )
    assert got["q"] == "balanced"
    config = {"model": "minilm", "data": "rotten-tomatoes", "ratio": "auto"}
    write_json(tmp_path / "metrics.json", {**record(rows()), "config": config})
    assert cli.main(["diagnose", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mlp   A barely learns: train longer (the auto ratio falls)" in out
    assert "lower the ratio:" not in out
    assert (tmp_path / "probe.png").is_file()
