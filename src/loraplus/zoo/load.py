"""load_data: a built-in name or a file -> TaskData with seeded, disjoint train and eval sets."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset
from loraplus.zoo.builtin import _PROMPTS, DATASETS, DatasetSpec
from loraplus.zoo.files import FILE_SUFFIXES, _find_split_files, _local_table, _read_file
from loraplus.zoo.models import _lookup, log
from loraplus.zoo.table import _index_labels, _label_names, _subset, _Table

TASKS = ("classification", "causal-lm")


_TASK_ALIASES = {
    "classification": "classification",
    "cls": "classification",
    "seq-cls": "classification",
    "sequence-classification": "classification",
    "causal-lm": "causal-lm",
    "clm": "causal-lm",
    "lm": "causal-lm",
    "sft": "causal-lm",
}


@dataclass
class TaskData:
    """Train and eval sets with standard columns: text/label, or prompt/response."""

    train: Dataset
    eval: Dataset
    task: str  # "classification" or "causal-lm"
    num_labels: int  # classes; for causal-lm from a labelled source, the possible answers
    label_names: list[str]  # label id -> name; [] for free-form causal-lm data
    source: str  # the built-in name or the file it came from
    split: str  # "official" (a given test file) or "random" (a seeded hash split)


def _hash_key(seed: int, salt: str, text: str) -> bytes:
    """A machine-independent sort key for a row, keyed on its text."""
    return hashlib.blake2b(f"{seed}\x00{salt}\x00{text}".encode(), digest_size=8).digest()


def _quotas(sizes: Sequence[int], total: int) -> list[int]:
    """Split total across groups in proportion to sizes (largest remainder, ties by order)."""
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    exact = [total * n / whole for n in sizes]
    quotas = [int(x) for x in exact]
    order = sorted(range(len(sizes)), key=lambda g: (quotas[g] - exact[g], g))
    for g in order[: total - sum(quotas)]:
        quotas[g] += 1
    return quotas


def _stratified_pick(
    keys: Sequence[str], groups: Sequence[int], total: int, seed: int, salt: str
) -> set[int]:
    """Indices of `total` items, proportional per group, lowest hash first within a group."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    ordered = sorted(by_group)
    quotas = _quotas([len(by_group[g]) for g in ordered], total)
    picked: set[int] = set()
    for g, quota in zip(ordered, quotas, strict=True):
        members = sorted(by_group[g], key=lambda i: (_hash_key(seed, salt, keys[i]), i))
        picked.update(members[:quota])
    return picked


def _key_column(table: _Table) -> list[str]:
    """What makes two rows the same example: the text, or the prompt."""
    return [str(v) for v in table.columns["text" if "text" in table.columns else "prompt"]]


def _groups(table: _Table) -> list[int]:
    """Stratification groups: the label, or one group for prompt/response rows."""
    return (
        list(table.columns["label"]) if "label" in table.columns else [0] * len(_key_column(table))
    )


def _random_split(table: _Table, fraction: float, seed: int) -> tuple[_Table, _Table]:
    """A stratified hash split in which rows with the same text always fall on the same side."""
    keys, groups = _key_column(table), _groups(table)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    uniques = list(first.values())  # one representative per distinct text, in file order
    n_eval = round(fraction * len(uniques))
    if len(uniques) >= 2:
        n_eval = min(max(n_eval, 1), len(uniques) - 1)
    chosen = _stratified_pick(
        [keys[i] for i in uniques], [groups[i] for i in uniques], n_eval, seed, "split"
    )
    eval_keys = {keys[uniques[j]] for j in chosen}
    train_rows = [i for i, k in enumerate(keys) if k not in eval_keys]
    eval_rows = [i for i, k in enumerate(keys) if k in eval_keys]
    return _subset(table, train_rows), _subset(table, eval_rows)


def _drop_overlap(train: _Table, eval_: _Table, source: str) -> _Table:
    """Train rows whose text is also in the eval set removed (logged)."""
    eval_keys = set(_key_column(eval_))
    keys = _key_column(train)
    keep = [i for i, k in enumerate(keys) if k not in eval_keys]
    if len(keep) < len(keys):
        log.info("%s: dropped %d train rows also in eval", source, len(keys) - len(keep))
    return _subset(train, keep)


def _subsample(table: _Table, limit: int | None, seed: int, salt: str) -> _Table:
    """At most `limit` rows, stratified and seeded, kept in file order."""
    n = len(_key_column(table))
    if limit is None or limit >= n:
        return table
    keys = [f"{k}\x00{i}" for i, k in enumerate(_key_column(table))]
    picked = _stratified_pick(keys, _groups(table), limit, seed, salt)
    return _subset(table, sorted(picked))


def _to_causal(table: _Table, template: str) -> _Table:
    """Labelled text as prompt/response pairs: the template's prompt, the label name as answer."""
    names = table.label_names or []
    return _Table(
        {
            "prompt": [template.format(text=t) for t in table.columns["text"]],
            "response": [f" {names[y]}" for y in table.columns["label"]],
        },
        table.label_names,
    )


def _to_dataset(table: _Table) -> Dataset:
    """A datasets.Dataset with standard columns and features."""
    from datasets import ClassLabel, Dataset, Features, Value

    if "label" in table.columns:
        features = Features(
            {"text": Value("string"), "label": ClassLabel(names=list(table.label_names or []))}
        )
    else:
        features = Features({"prompt": Value("string"), "response": Value("string")})
    return Dataset.from_dict(table.columns, features=features)


def _normalize_task(task: str) -> str:
    """The canonical task name, or a ValueError listing the choices."""
    key = str(task).strip().lower().replace("_", "-")
    if key not in _TASK_ALIASES:
        raise ValueError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    return _TASK_ALIASES[key]


def _check_limit(value: int | None, arg: str) -> None:
    """A max_train/max_eval is None or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{arg} must be a positive integer or None, got {value!r}.")


def load_data(
    name_or_path: str | os.PathLike[str],
    *,
    task: str,
    eval_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
) -> TaskData:
    """Train/eval sets from a built-in name, a data file, or a folder with train/test files."""
    task = _normalize_task(task)
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}.")
    _check_limit(max_train, "max_train")
    _check_limit(max_eval, "max_eval")
    try:
        import datasets  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as err:
        raise ImportError("load_data needs datasets and pandas: pip install datasets") from err

    name = os.fspath(name_or_path)
    columns = {
        "text": text_column,
        "label": label_column,
        "prompt": prompt_column,
        "response": response_column,
    }
    spec: DatasetSpec | None = _lookup(name, DATASETS)
    template = _PROMPTS["default"]
    if spec is not None:
        if any(v is not None for v in columns.values()):
            raise ValueError(
                f"Column options apply to local files only; built-in {spec.name!r} already has "
                "text/label columns. Drop the *_column arguments."
            )
        train, official = spec.read(spec)
        source, template = spec.name, spec.prompt
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(
                f"Unknown dataset {name!r}: not a built-in ({', '.join(DATASETS)}) and no such "
                f"file or folder. Pass a built-in name or a path to a "
                f"{'/'.join(s[1:] for s in FILE_SUFFIXES)} file."
            )
        train_path, eval_path = _find_split_files(path) if path.is_dir() else (path, None)
        tables = []
        for file in (train_path, eval_path):
            if file is not None:
                frame, hints = _read_file(file)
                tables.append(_local_table(frame, hints, task, file, columns))
        if "label" in tables[0].columns:
            names = _label_names(tables, str(path))
            tables = [_index_labels(t, names) for t in tables]
        train, official = tables[0], (tables[1] if len(tables) > 1 else None)
        source = str(path)
    if not _key_column(train):
        raise ValueError(f"{source} has no usable rows (every row had a blank text or label).")

    if official is None:
        train, eval_ = _random_split(train, eval_fraction, seed)
        split = "random"
    else:
        train, eval_, split = _drop_overlap(train, official, source), official, "official"
    train = _subsample(train, max_train, seed, "train")
    eval_ = _subsample(eval_, max_eval, seed, "eval")

    label_names = list(train.label_names or [])
    if task == "causal-lm" and "text" in train.columns:
        train, eval_ = _to_causal(train, template), _to_causal(eval_, template)
    return TaskData(
        train=_to_dataset(train),
        eval=_to_dataset(eval_),
        task=task,
        num_labels=len(label_names),
        label_names=label_names,
        source=source,
        split=split,
    )
