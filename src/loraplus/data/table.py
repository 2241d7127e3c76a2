"""Rows as `datasets.Dataset`: blank rows dropped, labels checked and encoded as a ClassLabel."""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


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


def is_missing_label(value: Any) -> bool:
    """is_missing, and a label cell that spells NaN ("NaN", "nan": a CSV's missing number)."""
    return is_missing(value) or (isinstance(value, str) and value.strip().lower() == "nan")


def pairs(
    a: Sequence[Any], b: Sequence[Any], names: tuple[str, str], source: object, say: bool = True
) -> dict[str, list[Any]]:
    """Columns a and b as {names[0]: ..., names[1]: ...}, rows with a blank cell dropped (said);
    a label column (names[1] == "label") also counts NaN spelled out as blank."""
    blank = is_missing_label if names[1] == "label" else is_missing
    keep = [(x, y) for x, y in zip(a, b, strict=True) if not (is_missing(x) or blank(y))]
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


def _as_number(value: Any) -> int | float:
    """A numeric label as an int where it is one ("3", 3, 3.0 -> 3), else a float."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    number = float(value)
    return int(number) if math.isfinite(number) and number.is_integer() else number


def _number_names(labels: Sequence[Any], source: str) -> tuple[list[str], list[int]]:
    """Numeric labels as (names, ids): the distinct integers sorted, each a class name, so
    labels 0..K-1 keep their ids and any others (1999/2005, 7/3000000) make K classes too."""
    values = [_as_number(v) for v in labels]
    odd = sorted({v for v in values if isinstance(v, float)}, key=str)
    if odd:
        raise ValueError(
            f"{source}: labels such as {', '.join(f'{v:g}' for v in odd[:3])} are not "
            "class ids; classification needs integer or string labels (regression is not "
            "supported)."
        )
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return [str(n) for n in names], [index[n] for n in values]


def check_label_values(labels: Sequence[Any], source: object) -> None:
    """Refuse list- or object-valued labels (multi-label rows), naming the first one."""
    for row, value in enumerate(labels, start=1):
        if isinstance(value, (list, tuple, dict, set)):
            raise ValueError(
                f"{source}: row {row} has the label {value!r}, a "
                f"{type(value).__name__}; multi-label classification is not supported. Give "
                "each row one label (one row per label), or pass --label-column."
            )


def encode_labels(parts: Sequence[dict[str, list[Any]]], source: str) -> list[Dataset]:
    """text/label parts (train, eval) as Datasets sharing one ClassLabel (mixed kinds refused)."""
    from datasets import concatenate_datasets

    labels = [v for part in parts for v in part["label"]]
    if not parts[0]["label"]:
        raise ValueError(f"{source} has no usable rows (every row had a blank text or label).")
    check_label_values(labels, source)
    _check_kinds(labels, source)
    if all(_kind(v) == "number" for v in labels):
        names, ids = _number_names(labels, source)
        merged = to_dataset({"text": [t for p in parts for t in p["text"]], "label": ids}, names)
    else:
        # " pos" and "pos" are one class: a CSV's spaces after commas are no part of a label
        strings = [
            {"text": p["text"], "label": [str(v).strip() for v in p["label"]]} for p in parts
        ]
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
