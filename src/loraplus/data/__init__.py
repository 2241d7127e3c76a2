"""Data loading: a built-in data set's name or the user's own CSV/TSV/JSONL/JSON/Parquet/Orange
file or folder -> seeded, machine-independent, disjoint train and eval sets (`load_data`).

files.py reads a file and finds its columns, table.py checks and encodes labels, load.py splits.
Built-in data sets come from `loraplus.zoo` (this package imports the zoo, never the reverse).
"""

from loraplus.data.load import TASKS, TaskData, check_source, load_data

__all__ = ["TASKS", "TaskData", "check_source", "load_data"]
