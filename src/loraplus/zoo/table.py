"""Rows as `datasets.Dataset`: blank rows dropped, labels checked and encoded as a ClassLabel."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
from loraplus.zoo.models import log


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars and no logged errors from `datasets` (its errors are raised, reworded)."""
    from datasets.utils import logging as ds_logging

    bars, verbosity = ds_logging.is_progress_bar_enabled(), ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars:
            ds_logging.enable_progress_bar()


def is_missing(value: Any) -> bool:
    """True for None, NaN and blank strings."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and not value.strip()


def pairs(
    a: Sequence[Any], b: Sequence[Any], names: tuple[str, str], source: object, say: bool = True
) -> dict[str, list[Any]]:
    """Columns a and b as {names[0]: ..., names[1]: ...}, rows with a blank cell dropped (said)."""
    keep = [(x, y) for x, y in zip(a, b, strict=True) if not (is_missing(x) or is_missing(y))]
    if len(keep) < len(a):
        log.log(
            logging.WARNING if say else logging.INFO,
            "%s: dropped %d of %d rows with a blank %s or %s",
            source,
            len(a) - len(keep),
            len(a),
            *names,
        )
    return {names[0]: [x for x, _ in keep], names[1]: [y for _, y in keep]}


def dedupe(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Exact duplicate rows removed, first occurrence kept."""
    rows = list(zip(*columns.values(), strict=True))
    keep = list(dict.fromkeys(rows))
    return {name: [row[i] for row in keep] for i, name in enumerate(columns)}


def to_dataset(columns: dict[str, list[Any]], label_names: Sequence[str] | None = None) -> Dataset:
    """A Dataset with standard columns: text + ClassLabel label, or prompt + response."""
    from datasets import ClassLabel, Dataset, Features, Value

    if "label" in columns:
        label = ClassLabel(names=list(label_names or []))
        features = Features({"text": Value("string"), "label": label})
    else:
        features = Features({"prompt": Value("string"), "response": Value("string")})
    return Dataset.from_dict(columns, features=features)


def _kind(value: Any) -> str:
    """'number' for a label that reads as a number (1, 2.5, "3"), 'word' otherwise."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    try:
        float(str(value))
    except ValueError:
        return "word"
    return "number"


def _check_kinds(labels: Sequence[Any], source: str) -> None:
    """Labels of one kind; numbers mixed with words (1, pos, 2.5, neg) are refused with counts."""
    kinds = Counter(_kind(v) for v in labels)
    if len(kinds) > 1:
        examples = {k: sorted({str(v) for v in labels if _kind(v) == k}) for k in kinds}
        parts = "; ".join(
            f"{n} rows are {k}s ({', '.join(examples[k][:3])}"
            f"{', ...' if len(examples[k]) > 3 else ''})"
            for k, n in sorted(kinds.items())
        )
        raise ValueError(
            f"{source}: the label column mixes kinds: {parts}. Use one kind of label "
            "(all class names, or all integer class ids), or pass --label-column."
        )


def _number_names(labels: Sequence[Any], source: str) -> tuple[list[str], list[int]]:
    """Numeric labels as (names, ids): ints 0..K-1 are already ids; others sorted then numbered."""
    values = [float(v) for v in labels]
    fractional = sorted({v for v in values if v != int(v)})
    if fractional:
        raise ValueError(
            f"{source}: labels such as {', '.join(f'{v:g}' for v in fractional[:3])} are not "
            "class ids; classification needs integer or string labels (regression is not "
            "supported)."
        )
    numbers = [int(v) for v in values]
    if min(numbers) >= 0:
        return [str(i) for i in range(max(numbers) + 1)], numbers
    names = sorted(set(numbers))
    index = {n: i for i, n in enumerate(names)}
    return [str(n) for n in names], [index[n] for n in numbers]


def encode_labels(parts: Sequence[dict[str, list[Any]]], source: str) -> list[Dataset]:
    """text/label parts (train, eval) as Datasets sharing one ClassLabel (mixed kinds refused)."""
    from datasets import concatenate_datasets

    labels = [v for part in parts for v in part["label"]]
    if not parts[0]["label"]:
        raise ValueError(f"{source} has no usable rows (every row had a blank text or label).")
    _check_kinds(labels, source)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        names, ids = _number_names(labels, source)
        merged = to_dataset({"text": [t for p in parts for t in p["text"]], "label": ids}, names)
    else:
        strings = [{"text": p["text"], "label": [str(v) for v in p["label"]]} for p in parts]
        with quiet_datasets():
            merged = concatenate_datasets([to_plain(p) for p in strings])
            merged = merged.class_encode_column("label")
    out, start = [], 0
    for part in parts:
        rows = range(start, start + len(part["text"]))
        out.append(merged.select(rows if len(rows) else []))
        start += len(part["text"])
    return out


def check_classes(parts: Sequence[Dataset], source: str) -> None:
    """At least two classes among the labels of all parts."""
    counts = Counter(v for part in parts for v in part["label"])
    if len(counts) < 2:
        ((only, rows),) = counts.items()
        name = parts[0].features["label"].names[only]
        raise ValueError(
            f"{source}: every one of the {rows} rows has the label {name!r}; "
            "classification needs at least 2 classes. Check --label-column."
        )


def to_plain(columns: dict[str, list[Any]]) -> Dataset:
    """A Dataset of string columns, no ClassLabel yet."""
    from datasets import Dataset, Features, Value

    return Dataset.from_dict(columns, features=Features({c: Value("string") for c in columns}))
