"""load_data: a built-in name or a file -> TaskData with seeded, disjoint train and eval sets."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loraplus.data.files import (
    FILE_SUFFIXES,
    chat_dataset,
    file_format,
    find_split_files,
    read_table,
    table_columns,
)
from loraplus.data.table import check_classes, dedupe, encode_labels, pairs, to_dataset
from loraplus.zoo.builtin import DATASETS, DatasetSpec, find_dataset

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

TASKS = ("classification", "causal-lm")
DEFAULT_PROMPT = "Text: {text}\nLabel:"  # a labelled file as causal-LM prompts: {text} -> prompt


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
    """Train and eval sets with standard columns: text/label, prompt/response, or messages."""

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


def _key_column(data: Dataset) -> list[str]:
    """What makes two rows the same example: the text, the prompt, or the whole conversation."""
    if "messages" in data.column_names:
        return [json.dumps(turns, sort_keys=True) for turns in data["messages"]]
    return [str(v) for v in data["text" if "text" in data.column_names else "prompt"]]


def _groups(data: Dataset) -> list[int]:
    """Stratification groups: the label, or one group for prompt/response rows."""
    return list(data["label"]) if "label" in data.column_names else [0] * len(data)


def _random_split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A stratified split by a keyed hash of the text: rows with one text share a side.

    Not `Dataset.train_test_split(stratify_by_column=)`: that splits rows, not texts (a repeated
    text would land on both sides), draws from numpy's Generator, whose streams NumPy does not
    promise to keep across versions (NEP 19), and refuses small sets (a class of one row, or
    fewer eval rows than classes). Here each text's side depends only on the seed and the text.
    """
    keys, groups = _key_column(data), _groups(data)
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
    return data.select(train_rows), data.select(eval_rows)


def _drop_overlap(train: Dataset, eval_: Dataset, source: str) -> Dataset:
    """Train rows whose text is also in the eval set removed (said in one line)."""
    eval_keys = set(_key_column(eval_))
    keys = _key_column(train)
    keep = [i for i, k in enumerate(keys) if k not in eval_keys]
    if len(keep) < len(keys):
        log.warning(
            "%s: dropped %d of %d train rows whose text is also in the eval set",
            source,
            len(keys) - len(keep),
            len(keys),
        )
    return train.select(keep)


def _subsample(data: Dataset, limit: int | None, seed: int, salt: str) -> Dataset:
    """At most `limit` rows, stratified and seeded, kept in file order."""
    if limit is None or limit >= len(data):
        return data
    keys = [f"{k}\x00{i}" for i, k in enumerate(_key_column(data))]
    picked = _stratified_pick(keys, _groups(data), limit, seed, salt)
    return data.select(sorted(picked))


def _to_causal(data: Dataset, template: str) -> Dataset:
    """Labelled text as prompt/response pairs: the template's prompt, the label name as answer."""
    names = data.features["label"].names
    return to_dataset(
        {
            "prompt": [template.format(text=t) for t in data["text"]],
            "response": [f" {names[y]}" for y in data["label"]],
        }
    )


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


def _unknown_data(name: str) -> ValueError:
    """The error for --data that is neither a built-in nor an existing path."""
    return ValueError(
        f"Unknown dataset {name!r}: not a built-in ({', '.join(DATASETS)}) and no such "
        f"file or folder. Pass a built-in name or a path to a "
        f"{'/'.join(s[1:] for s in FILE_SUFFIXES)} file."
    )


def _eval_file(eval_data: str | os.PathLike[str]) -> Path:
    """The --eval-data file, checked to exist and to be a readable table format."""
    path = Path(eval_data).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"--eval-data {os.fspath(eval_data)!r} {what}: pass a data file.")
    file_format(path)
    return path


def check_source(
    name_or_path: str | os.PathLike[str], eval_data: str | os.PathLike[str] | None = None
) -> None:
    """Cheap checks of --data and --eval-data (names, paths, formats), reading no rows."""
    name = os.fspath(name_or_path)
    if find_dataset(name) is not None:
        if eval_data is not None:
            raise ValueError(
                f"--eval-data applies to local data files; built-in {name!r} has its own eval "
                "set. Drop --eval-data, or pass your own train file as --data."
            )
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise _unknown_data(name)
    train_path, eval_path = find_split_files(path) if path.is_dir() else (path, None)
    file_format(train_path)
    if eval_data is not None:
        if eval_path is not None:
            raise ValueError(
                f"--data folder {name} already holds an eval file ({eval_path.name}); drop "
                "--eval-data or remove that file."
            )
        _eval_file(eval_data)


def _read_local(
    path: Path, eval_data: str | os.PathLike[str] | None, task: str, columns: dict[str, str | None]
) -> tuple[Dataset, Dataset | None]:
    """A local file or folder (plus an optional eval file) as Datasets with standard columns."""
    train_path, eval_path = find_split_files(path) if path.is_dir() else (path, None)
    if eval_data is not None:
        eval_path = _eval_file(eval_data)
    files = [f for f in (train_path, eval_path) if f is not None]
    parts = [table_columns(*read_table(f), task, f, columns) for f in files]
    if set(parts[0]) != set(parts[-1]):
        raise ValueError(
            f"{files[-1]} has {'/'.join(parts[-1])} columns but {files[0]} has "
            f"{'/'.join(parts[0])}: give both files the same columns."
        )
    if "label" in parts[0]:
        tables = encode_labels(parts, str(path))
    else:
        tables = [chat_dataset(p) if "messages" in p else to_dataset(p) for p in parts]
    return tables[0], (tables[1] if len(tables) > 1 else None)


def _read_builtin(spec: DatasetSpec) -> tuple[Dataset, Dataset | None]:
    """A built-in's rows as Datasets: blank rows dropped (logged, not warned), labels as the
    spec's class names (else the sorted names over all parts), exact duplicates removed."""
    parts = [rows for rows in spec.read(spec) if rows is not None]
    kept = [pairs(r.text, r.label, ("text", "label"), r.source, say=False) for r in parts]
    names = list(spec.label_names or sorted({str(v) for t in kept for v in t["label"]}))
    index = {name: i for i, name in enumerate(names)}
    tables = [
        to_dataset(dedupe({"text": t["text"], "label": [index[str(v)] for v in t["label"]]}), names)
        for t in kept
    ]
    return tables[0], (tables[1] if len(tables) > 1 else None)


def _read(
    name: str, eval_data: str | os.PathLike[str] | None, task: str, columns: dict[str, str | None]
) -> tuple[Dataset, Dataset | None, str, str]:
    """(train, official eval or None, source, causal-LM prompt template) for a built-in or path."""
    check_source(name, eval_data)
    spec = find_dataset(name)
    if spec is None:
        path = Path(name).expanduser()
        return (*_read_local(path, eval_data, task, columns), str(path), DEFAULT_PROMPT)
    if any(v is not None for v in columns.values()):
        raise ValueError(
            f"Column options apply to local files only; built-in {spec.name!r} already has "
            "text/label columns. Drop the *_column arguments."
        )
    train, official = _read_builtin(spec)
    return train, official, spec.name, spec.prompt


def _split(
    train: Dataset, official: Dataset | None, fraction: float, seed: int, source: str
) -> tuple[Dataset, Dataset, str]:
    """(train, eval, how): the given eval set, else a seeded split; an empty side is refused."""
    if official is None:
        distinct = len(set(_key_column(train)))
        train_part, eval_part = _random_split(train, fraction, seed)
        if not len(train_part) or not len(eval_part):
            raise ValueError(
                f"{source} has {len(train)} usable rows with {distinct} distinct text(s): a "
                "train/eval split needs at least 2 distinct texts. Add rows, or pass --eval-data."
            )
        return train_part, eval_part, "random"
    if not len(official):
        raise ValueError(f"The eval set of {source} has no usable rows.")
    kept = _drop_overlap(train, official, source)
    if not len(kept):
        raise ValueError(
            f"{source}: all {len(train)} train rows have a text that is also in the eval set; "
            "nothing is left to train on."
        )
    return kept, official, "official"


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
    eval_data: str | os.PathLike[str] | None = None,
) -> TaskData:
    """Train/eval sets from a built-in name, a data file, or a folder with train/test files.

    The eval set is `eval_data`, else the folder's test/eval/validation/valid/dev file, else the
    built-in's official test set, else a split of the data seeded by `seed`. Train rows whose
    text is also in a given eval set are dropped (one logged warning). `max_train` rows are
    drawn with `seed`; the `max_eval` subset of an eval set is the same for every seed.
    """
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
    train, official, source, template = _read(name, eval_data, task, columns)
    if not len(train):
        raise ValueError(f"{source} has no usable rows (every row had a blank text or label).")

    train, eval_, split = _split(train, official, eval_fraction, seed, source)
    if "label" in train.column_names:
        check_classes([train, eval_], source)
    train = _subsample(train, max_train, seed, "train")
    eval_ = _subsample(eval_, max_eval, 0, "eval")  # the same eval rows for every seed

    label_names = list(train.features["label"].names) if "label" in train.column_names else []
    if task == "causal-lm" and "text" in train.column_names:
        train, eval_ = _to_causal(train, template), _to_causal(eval_, template)
    return TaskData(
        train=train,
        eval=eval_,
        task=task,
        num_labels=len(label_names),
        label_names=label_names,
        source=source,
        split=split,
    )
