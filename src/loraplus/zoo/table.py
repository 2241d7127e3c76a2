"""The in-memory table of (text, label) rows that every data source is read into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
from loraplus.zoo.models import log


@dataclass(frozen=True)
class _Table:
    """Rows read from a source: texts with string or int labels, or prompts with responses."""

    columns: dict[str, list[Any]]  # text+label, or prompt+response
    label_names: list[str] | None = None  # fixed label order (labels are then ints)


def _is_missing(value: Any) -> bool:
    """True for None, NaN and blank strings."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and not value.strip()


def _rows(frame: pd.DataFrame, a: str, b: str, names: tuple[str, str], source: object) -> _Table:
    """Columns a and b renamed to `names`, dropping rows where either is blank (logged)."""
    keep_a, keep_b = [], []
    for x, y in zip(frame[a].tolist(), frame[b].tolist(), strict=True):
        if _is_missing(x) or _is_missing(y):
            continue
        keep_a.append(x)
        keep_b.append(y)
    dropped = len(frame) - len(keep_a)
    if dropped:
        log.info("%s: dropped %d rows with a blank %r or %r", source, dropped, a, b)
    return _Table({names[0]: keep_a, names[1]: keep_b})


def _dedupe(table: _Table) -> _Table:
    """Exact duplicate rows removed, first occurrence kept."""
    seen: set[tuple[Any, ...]] = set()
    keep = []
    cols = list(table.columns)
    for i, row in enumerate(zip(*(table.columns[c] for c in cols), strict=True)):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return _subset(table, keep)


def _index_labels(table: _Table, names: list[str]) -> _Table:
    """Labels turned into ids of `names` (ints that are already ids are kept)."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for v in table.columns["label"]:
        key = str(int(v)) if isinstance(v, float) and not isinstance(v, bool) else str(v)
        ids.append(index[key])
    return _Table({"text": table.columns["text"], "label": ids}, names)


def _label_names(tables: Sequence[_Table], source: str) -> list[str]:
    """Names for raw labels: ints 0..K-1 kept as ids, anything else sorted then numbered."""
    values = {v for t in tables for v in t.columns["label"]}
    if all(isinstance(v, bool) for v in values):
        return ["False", "True"]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(float(v) != int(v) for v in values):
            raise ValueError(
                f"{source}: labels such as {sorted(values)[:3]} are not class ids; classification "
                "needs integer or string labels (regression is not supported)."
            )
        numbers = sorted({int(v) for v in values})
        if numbers[0] >= 0:
            return [str(i) for i in range(numbers[-1] + 1)]  # already class ids: keep them
        return [str(i) for i in numbers]
    return sorted({str(v) for v in values})


def _subset(table: _Table, rows: Sequence[int]) -> _Table:
    """The given rows, in the given order."""
    return _Table({c: [v[i] for i in rows] for c, v in table.columns.items()}, table.label_names)
