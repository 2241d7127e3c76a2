"""`loraplus diagnose`: from a run's feature-update probe records, one verdict per module kind.

A probe record is one row per probed step (the shape `FeatureUpdateCallback.history` keeps and
the run record, metrics.json, stores under "feature_updates"):

    {"step": 11.0, "delta_a": ..., "delta_b": ..., "balance_log2": ... | null,   # layer medians
     "layers": [{"layer": "...q_proj", "adapter": "default", "kind": "q", "delta_a": δ¹,
                 "delta_b": δ², "delta_ab": δ³, "balance_log2": log2(δ²/δ¹) | null}, ...]}

balance_log2 is null where δ¹ or δ² is 0 (the first step from Init[1] has δ¹ = 0 since B = 0).
Pure functions: records -> verdicts, records -> figure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# |median log2(δ²/δ¹)| <= 3 is "balanced": the smaller share is at least 1/8 of the larger, i.e.
# both are of the same order of magnitude (one decade is 3.3 octaves), which is all the paper's
# efficiency condition (δ¹, δ² both Θ(1)) asks. Beyond it, one matrix moves the features less
# than an eighth as much as the other: effectively frozen. Adam's balance moves only about half
# an octave per octave of ratio once B has grown, so a looser band would hide a ratio that is
# several octaves off.
BALANCED_LOG2 = 3.0

KINDS = ("q", "k", "v", "qkv", "o", "mlp", "other")
_DIRECT = {
    **dict.fromkeys(("q_proj", "query", "q", "wq", "q_lin", "to_q"), "q"),
    **dict.fromkeys(("k_proj", "key", "k", "wk", "k_lin", "to_k"), "k"),
    **dict.fromkeys(("v_proj", "value", "v", "wv", "v_lin", "to_v"), "v"),
    **dict.fromkeys(("qkv_proj", "c_attn", "query_key_value", "wqkv", "qkv"), "qkv"),
    **dict.fromkeys(("o_proj", "out_proj", "o", "out_lin", "to_out", "wo_attn"), "o"),
    **dict.fromkeys(
        (
            *("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "fc_in", "fc_out"),
            *("w1", "w2", "w3", "wi", "wi_0", "wi_1", "lin1", "lin2"),
            *("dense_h_to_4h", "dense_4h_to_h"),
        ),
        "mlp",
    ),
}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn", "intermediate", "densereludense", "block_sparse_moe"}


def module_kind(layer: str) -> str:
    """q, k, v, qkv, o, mlp or other, from a LoRA layer's module name (any PEFT wrapper prefix)."""
    parts = layer.lower().split(".")
    last, parents = parts[-1], parts[:-1]
    if last in _DIRECT:
        return _DIRECT[last]
    if any(p in _MLP_PARENTS for p in parents):
        return "mlp"
    if last in ("dense", "c_proj", "proj", "out") and any("att" in p for p in parents):
        return "o"  # BERT attention.output.dense, GPT-2 attn.c_proj
    if last == "dense" and parents and parents[-1] == "output":
        return "mlp"  # BERT's layer.N.output.dense, the FFN's down-projection
    return "other"


def finite_or_none(value: Any) -> float | None:
    """`value` as a float, or None when it is missing, NaN or ±inf."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def format_balance(value: Any) -> str:
    """A balance for printing: "+1.3", or "n/a" where δ¹ or δ² was 0 (None, NaN, inf)."""
    number = finite_or_none(value)
    return "n/a" if number is None else f"{number:+.1f}"


@dataclass(frozen=True)
class Verdict:
    """One module kind's diagnosis, with the numbers behind it."""

    kind: str
    layers: int
    steps: tuple[float, float]  # first and last probed step of the late half used
    balance_log2: float | None  # median log2(δ²/δ¹) over layers and late probed steps
    delta_a: float  # median δ¹ (A's share), same rows
    delta_b: float  # median δ² (B's share)
    verdict: str

    def line(self) -> str:
        """One line: kind, verdict, numbers."""
        return (
            f"{self.kind:<5} {self.verdict}: median log2(δ²/δ¹) "
            f"{format_balance(self.balance_log2)} over {self.layers} layers, steps "
            f"{self.steps[0]:g}-{self.steps[1]:g}; δ¹ {self.delta_a:.3g}, δ² {self.delta_b:.3g}"
        )


def judge(balance: float | None, threshold: float = BALANCED_LOG2, *, auto: bool = False) -> str:
    """The verdict for a median log2(δ²/δ¹): balanced within ±threshold, else who lags and what
    to do; a run with `--ratio auto` (`auto`) sets its own ratio, so it is told what it can do."""
    if balance is None:
        return "no data"
    if balance < -threshold:
        if auto:
            return "B barely learns: train longer (the auto ratio rises) or fix a higher --ratio"
        return "B barely learns: raise the ratio"
    if balance > threshold:
        if auto:
            return "A barely learns: train longer (the auto ratio falls) or fix a lower --ratio"
        return "A barely learns: lower the ratio"
    return "balanced"


def _layers_of(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(row.get("layers") or [])


def _kind(rec: Mapping[str, Any]) -> str:
    return str(rec.get("kind") or module_kind(str(rec["layer"])))


def verdicts(
    rows: Sequence[Mapping[str, Any]], threshold: float = BALANCED_LOG2, *, auto: bool = False
) -> list[Verdict]:
    """One verdict per module kind, from the late half of the probed steps (training has settled);
    `auto`: the run chose its own ratio (`--ratio auto`), which changes the advice.

    The balance is the median of the finite per-layer balances; where every one is infinite
    (δ¹ or δ² exactly 0 throughout), it is log2 of the ratio of the δ medians, ±inf if one is 0.
    """
    rows = sorted((r for r in rows if _layers_of(r)), key=lambda r: float(r["step"]))
    late = rows[len(rows) // 2 :]
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for row in late:
        for rec in _layers_of(row):
            by_kind.setdefault(_kind(rec), []).append(rec)
    out = []
    for kind in sorted(by_kind, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS)):
        recs = by_kind[kind]
        d1 = statistics.median(float(r["delta_a"]) for r in recs)
        d2 = statistics.median(float(r["delta_b"]) for r in recs)
        finite = [b for b in (finite_or_none(r.get("balance_log2")) for r in recs) if b is not None]
        balance: float | None
        if finite:
            balance = statistics.median(finite)
        elif d1 > 0 or d2 > 0:
            balance = math.inf if d1 == 0 else (-math.inf if d2 == 0 else math.log2(d2 / d1))
        else:
            balance = None
        layers = len({_layer_key(r) for r in recs})
        steps = (float(late[0]["step"]), float(late[-1]["step"]))
        verdict = judge(balance, threshold, auto=auto)
        out.append(Verdict(kind, layers, steps, balance, d1, d2, verdict))
    return out


def kind_scalars(layers: Iterable[Mapping[str, Any]], prefix: str = "probe") -> dict[str, float]:
    """{"probe/q/balance_log2": ..., "probe/q/delta_a": ..., ...}: medians per kind, finite only."""
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for rec in layers:
        by_kind.setdefault(_kind(rec), []).append(rec)
    out: dict[str, float] = {}
    for kind, recs in by_kind.items():
        out[f"{prefix}/{kind}/delta_a"] = statistics.median(float(r["delta_a"]) for r in recs)
        out[f"{prefix}/{kind}/delta_b"] = statistics.median(float(r["delta_b"]) for r in recs)
        finite = [b for b in (finite_or_none(r.get("balance_log2")) for r in recs) if b is not None]
        if finite:
            out[f"{prefix}/{kind}/balance_log2"] = statistics.median(finite)
    return out


def read_probe_records(run: str | Path) -> list[dict[str, Any]]:
    """The probe rows (`feature_updates`) of a run folder or its metrics.json, read by the run
    record's reader. ValueError naming the file and what is wrong with it (see read_record;
    records without step / layer / δ numbers)."""
    from loraplus.train.record import RECORD_FILE, read_record

    path = Path(run)
    path = path / RECORD_FILE if path.is_dir() else path
    rows = read_record(path).feature_updates
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: its probe records are not a list of objects (edited?).")
    if not any(_layers_of(r) for r in rows):
        raise ValueError(
            f"{path} has no per-layer probe records; train with --probe-every 10 "
            "(FeatureUpdateCallback) to record δ¹ and δ² per layer."
        )
    for row in rows:
        _check_row(path, row)
    return [dict(r) for r in rows]


def _number(value: Any) -> bool:
    """True for an int or float (not a bool); NaN and inf count: they are recorded as such."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_row(path: Path, row: Mapping[str, Any]) -> None:
    """One probe record: a numeric step, and layers with a name and numeric δ¹, δ²."""
    layers = row.get("layers") or []
    if not layers:
        return
    if not _number(row.get("step")):
        raise ValueError(f"{path}: a probe record has step {row.get('step')!r}, not a number.")
    if not isinstance(layers, list):
        raise ValueError(f"{path}: the layers of step {row['step']} are not a list (edited?).")
    for rec in layers:
        ok = isinstance(rec, dict) and isinstance(rec.get("layer"), str)
        bad = [k for k in ("delta_a", "delta_b") if not ok or not _number(rec.get(k))]
        if bad:
            raise ValueError(
                f"{path}: a layer record of step {row['step']} lacks a layer name or a numeric "
                f"{' / '.join(bad) or 'layer'} ({rec!r:.80}); the file was edited or cut."
            )


def run_config(run: str | Path) -> dict[str, Any]:
    """The training config recorded in a run's metrics.json ({} when there is none)."""
    from loraplus.train.record import RECORD_FILE, read_record

    path = Path(run)
    if not (path / RECORD_FILE if path.is_dir() else path).is_file():
        return {}
    config = read_record(path).config
    return dict(config) if isinstance(config, Mapping) else {}


def probe_figure(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "", auto: bool = False
) -> dict[str, Any]:
    """draw_probe(rows, title=, auto=) written as PNG to `path`.

    Returns what was drawn, {kind: {"steps", "balance": {layer: [...]}, "delta_a", "delta_b"}},
    with NaN where a balance was not finite; those and δ = 0 (log axis) are drawn as gaps.
    """
    from loraplus.plots import save_png

    save_png(draw_probe(rows, title=title, auto=auto), path)
    return _series(rows)


_EXPLAIN = (
    "δ¹: how far A's step moved the layer's output, δ²: how far B's did (RMS); "
    f"balanced: |log2(δ²/δ¹)| ≤ {BALANCED_LOG2:g} (grey band)"
)


def draw_probe(rows: Sequence[Mapping[str, Any]], *, title: str = "", auto: bool = False) -> Any:
    """The probe figure: per module kind, each layer's log2(δ²/δ¹) over steps (left; the panel's
    title is the kind's verdict) and the kind's median δ¹, δ² (right). Returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    drawn = _series(rows)
    verdict_of = {v.kind: v for v in verdicts(rows, auto=auto)}
    fig = Figure(figsize=(12.0, 1.2 + 2.9 * max(1, len(drawn))))
    for k, (kind, data) in enumerate(drawn.items()):
        left = fig.add_subplot(len(drawn), 2, 2 * k + 1)
        layers = list(data["balance"].items())
        colours = [_depth_colour(i, len(layers)) for i in range(len(layers))]
        for (layer, values), colour in zip(layers, colours, strict=True):
            left.plot(data["steps"], values, lw=0.9, color=colour, label=_short(layer))
        left.axhspan(-BALANCED_LOG2, BALANCED_LOG2, color="0.9", zorder=0)
        left.axhline(0.0, color="k", lw=0.8, ls="--")
        left.set_ylabel("log2(δ²/δ¹)")
        verdict = verdict_of.get(kind)
        left.set_title(
            f"{kind}: {verdict.verdict if verdict else 'no data'}"
            + (f" (median {format_balance(verdict.balance_log2)})" if verdict else ""),
            fontsize=9,
        )
        shown = layers if len(layers) <= 6 else [layers[0], layers[-1]]
        handles = [
            Line2D([], [], color=colours[layers.index(item)], label=_short(item[0]))
            for item in shown
        ]
        left.legend(
            handles=handles,
            title=f"{len(layers)} layers, light = first" if len(layers) > 6 else None,
            fontsize=6,
            title_fontsize=6,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
        right = fig.add_subplot(len(drawn), 2, 2 * k + 2)
        positive = [[v if v > 0 else math.nan for v in data[k]] for k in ("delta_a", "delta_b")]
        right.plot(data["steps"], positive[0], "o-", ms=3, label="δ¹ (A's step)")
        right.plot(data["steps"], positive[1], "s--", ms=3, label="δ² (B's step)")
        if any(v > 0 for v in data["delta_a"] + data["delta_b"]):
            right.set_yscale("log")
        right.set_ylabel("RMS feature update")
        many = "s" if len(layers) != 1 else ""
        right.set_title(f"{kind}: median over its {len(layers)} layer{many}", fontsize=9)
        left.set_xlim(right.get_xlim())  # the same steps, though the first balance may be n/a
        right.legend(fontsize=7)
        if k == len(drawn) - 1:
            left.set_xlabel("step")
            right.set_xlabel("step")
    fig.suptitle((title + "\n" if title else "") + _EXPLAIN, fontsize=9)
    fig.tight_layout()
    return fig


def _depth_colour(index: int, count: int) -> Any:
    """The colour of the index-th of `count` layers: light (first) to dark (last)."""
    from matplotlib import colormaps

    return colormaps["viridis_r"](0.1 + 0.8 * index / max(1, count - 1))


def _short(layer: str) -> str:
    """A layer's name for a legend: from its layer number on ("3.self_attn.q_proj")."""
    parts = layer.split(".")
    first = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return ".".join(parts[first:]) if first is not None else parts[-1]


def _layer_key(rec: Mapping[str, Any]) -> str:
    adapter = str(rec.get("adapter", "default"))
    return str(rec["layer"]) + ("" if adapter == "default" else f"[{adapter}]")


def _series(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    rows = sorted((r for r in rows if _layers_of(r)), key=lambda r: float(r["step"]))
    steps = [float(r["step"]) for r in rows]
    kinds: dict[str, dict[str, Any]] = {}
    for t, row in enumerate(rows):
        for rec in _layers_of(row):
            data = kinds.setdefault(_kind(rec), {"steps": steps, "balance": {}, "per_step": {}})
            series = data["balance"].setdefault(_layer_key(rec), [math.nan] * len(steps))
            balance = finite_or_none(rec.get("balance_log2"))
            series[t] = math.nan if balance is None else balance
            data["per_step"].setdefault(t, []).append(rec)
    for data in kinds.values():
        per_step = data.pop("per_step")
        for name in ("delta_a", "delta_b"):
            data[name] = [
                statistics.median(float(r[name]) for r in per_step[t])
                if t in per_step
                else math.nan
                for t in range(len(steps))
            ]
    order = sorted(kinds, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
    return {k: kinds[k] for k in order}
