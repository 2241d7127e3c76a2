"""The user's own data files (CSV/TSV/JSONL/JSON/Parquet/Orange .tab): formats and columns."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
from loraplus.zoo.table import _is_missing, _rows, _Table

# Column names recognised in local files, most specific first (matched case-insensitively).
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")


LABEL_COLUMNS = ("label", "labels", "target", "class", "category")


PROMPT_COLUMNS = ("prompt", "instruction", "question", "query")


RESPONSE_COLUMNS = ("response", "output", "answer", "completion")


FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".tab")


_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


_EVAL_STEMS = ("test", "eval", "validation", "valid", "dev")


def _format_of(path: Path) -> str:
    """The table format of a file from its suffix, ignoring a compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"Cannot read {path}: unsupported file type {suffix or '(none)'!r}. "
            f"Use one of {', '.join(FILE_SUFFIXES)} (optionally compressed)."
        )
    return suffix


def _read_file(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A local CSV/TSV/JSON(L)/Parquet/Orange file as a DataFrame, plus column hints."""
    import pandas as pd

    suffix = _format_of(path)
    try:
        if suffix == ".tab":
            return read_orange_tab(path)
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            # "None"/"NA" are real words in text: only empty cells are missing
            return pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[""]), {}
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False), {}
        if suffix == ".json":
            try:
                return pd.read_json(path, dtype=False), {}
            except ValueError:
                return pd.read_json(path, lines=True, dtype=False), {}
        return pd.read_parquet(path), {}
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"Cannot read {path} as {suffix[1:]}: {err}") from err


def _find_split_files(folder: Path) -> tuple[Path, Path | None]:
    """train.<ext> and an optional test/eval/validation/valid/dev.<ext> inside a folder."""

    def find(stem: str) -> Path | None:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.lower().split(".")[0] == stem:
                try:
                    _format_of(path)
                except ValueError:
                    continue
                return path
        return None

    train = find("train")
    if train is None:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ValueError(
            f"Folder {folder} has no train file (found: {found}). Put the data in train.csv "
            f"(or .jsonl/.parquet/...), optionally with test.csv, or pass the file itself."
        )
    evals = [p for p in (find(stem) for stem in _EVAL_STEMS) if p is not None]
    return train, (evals[0] if evals else None)


def _pick(
    frame: pd.DataFrame, explicit: str | None, candidates: Sequence[str], arg: str, hint: str = ""
) -> str | None:
    """The column to use: the explicit one (checked), the file's hint, else a known name."""
    columns = [str(c) for c in frame.columns]
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(
                f"Column {explicit!r} ({arg}) not found; columns found: {', '.join(columns)}."
            )
        return explicit
    if hint:
        return hint
    lower = {c.lower(): c for c in reversed(columns)}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    return None


def _no_column(frame: pd.DataFrame, what: str, candidates: Sequence[str], arg: str) -> ValueError:
    """The error for a column that could not be detected."""
    columns = ", ".join(str(c) for c in frame.columns)
    return ValueError(
        f"No {what} column found (looked for {', '.join(candidates)}); columns found: {columns}. "
        f"Pass {arg}."
    )


def _local_table(
    frame: pd.DataFrame,
    hints: dict[str, str],
    task: str,
    source: Path,
    columns: dict[str, str | None],
) -> _Table:
    """A local frame as text/label (labels still raw) or prompt/response columns."""
    from pandas.api.types import is_string_dtype

    if task == "causal-lm":
        prompt = _pick(frame, columns["prompt"], PROMPT_COLUMNS, "prompt_column")
        response = _pick(frame, columns["response"], RESPONSE_COLUMNS, "response_column")
        if prompt is not None and response is not None:
            extra = _pick(frame, None, ("input",), "")
            if prompt.lower() == "instruction" and extra not in (None, response):
                frame = frame.assign(  # Alpaca style: the optional input follows the instruction
                    _prompt=[
                        str(p) if _is_missing(x) else f"{p}\n\n{x}"
                        for p, x in zip(frame[prompt], frame[extra], strict=True)
                    ]
                )
                prompt = "_prompt"
            rows = _rows(frame, prompt, response, ("prompt", "response"), source)
            return _Table({k: [str(v) for v in vals] for k, vals in rows.columns.items()})
        if prompt is None and columns["response"] is not None:
            raise _no_column(frame, "prompt", PROMPT_COLUMNS, "prompt_column=<name>")
        if response is None and columns["prompt"] is not None:
            raise _no_column(frame, "response", RESPONSE_COLUMNS, "response_column=<name>")
        # else: a labelled text file, turned into prompt/answer pairs by the caller
    label = _pick(frame, columns["label"], LABEL_COLUMNS, "label_column", hints.get("label", ""))
    text = _pick(frame, columns["text"], TEXT_COLUMNS, "text_column", hints.get("text", ""))
    if text is None:
        strings = [c for c in frame.columns if c != label and is_string_dtype(frame[c])]
        if len(strings) == 1:  # the only string column is obviously the text
            text = str(strings[0])
    if text is None:
        if task == "causal-lm":
            raise _no_column(
                frame,
                "prompt/response or text",
                PROMPT_COLUMNS + RESPONSE_COLUMNS + TEXT_COLUMNS,
                "prompt_column= and response_column= (or text_column= and label_column=)",
            )
        raise _no_column(frame, "text", TEXT_COLUMNS, "text_column=<name>")
    if label is None:
        raise _no_column(frame, "label", LABEL_COLUMNS, "label_column=<name>")
    rows = _rows(frame, text, label, ("text", "label"), source)
    return _Table({"text": [str(t) for t in rows.columns["text"]], "label": rows.columns["label"]})


_ORANGE_MISSING = {"", "?", "~", "NA"}  # Orange's unknown-value markers


def read_orange_tab(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """An Orange .tab file (3 header rows: names, types, flags) as strings, plus column hints."""
    import pandas as pd

    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if len(rows) < 3:
        raise ValueError(f"{path} is not an Orange .tab file: it needs 3 header rows.")
    names, types, flags = (row + [""] * (len(rows[0]) - len(row)) for row in rows[:3])
    width = len(names)
    body = [row + [""] * (width - len(row)) for row in rows[3:] if any(v.strip() for v in row)]
    cells = [[None if v.strip() in _ORANGE_MISSING else v for v in row[:width]] for row in body]
    frame = pd.DataFrame(cells, columns=names, dtype=object)
    hints: dict[str, str] = {}
    for name, kind, flag in zip(names, types, flags, strict=False):
        flag_words = flag.lower().split()
        if "label" not in hints and ("class" in flag_words or "c" in flag_words):
            hints["label"] = name
        if "text" not in hints and kind.strip().lower() in ("string", "s", "text"):
            hints["text"] = name
    return frame, hints
