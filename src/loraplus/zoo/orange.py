"""Orange's .tab format (3 header rows: names, types, flags): the built-in 20 Newsgroups and
Reuters files come in it, and loraplus.data reads a user's own .tab file through it too."""

from __future__ import annotations

import csv
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

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
