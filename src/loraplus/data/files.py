"""The user's own data files (CSV/TSV/JSONL/JSON/Parquet/Orange .tab): formats and columns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus.data.table import is_missing, pairs, quiet_datasets
from loraplus.zoo.orange import read_orange_tab

if TYPE_CHECKING:
    from datasets import Dataset

# Column names recognised in local files, most specific first (matched case-insensitively).
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")


LABEL_COLUMNS = ("label", "labels", "target", "class", "category")


PROMPT_COLUMNS = ("prompt", "instruction", "question", "query")


RESPONSE_COLUMNS = ("response", "output", "answer", "completion")


# Chat data: OpenAI/TRL `messages` ({"role", "content"}) or ShareGPT `conversations` ({"from",
# "value"}); ShareGPT's speakers are renamed to the roles chat templates know.
CHAT_COLUMNS = {"messages": ("role", "content"), "conversations": ("from", "value")}


CHAT_ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "human": "user",
    "gpt": "assistant",
}


FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".tab")


_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


_EVAL_STEMS = ("test", "eval", "validation", "valid", "dev")


def file_format(path: Path) -> str:
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


_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


def read_table(path: Path) -> tuple[Dataset, dict[str, str]]:
    """A local CSV/TSV/JSON(L)/Parquet/Orange file as a Dataset (`load_dataset`), plus hints."""
    from datasets import Dataset, load_dataset

    suffix = file_format(path)
    if suffix == ".tab":
        frame, hints = read_orange_tab(path)
        return Dataset.from_dict({str(c): frame[c].tolist() for c in frame.columns}), hints
    builder = _BUILDERS.get(suffix, "parquet")
    options: dict[str, Any] = {}
    if builder == "csv":  # "None"/"NA" are real words in text: only empty cells are missing
        options = {"sep": "\t" if suffix == ".tsv" else ",", "keep_default_na": False}
        options["na_values"] = [""]
    try:
        with quiet_datasets():
            data = load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # datasets wraps the parser's error in DatasetGenerationError
        raise ValueError(_read_error(path, suffix, err)) from None
    return data, {}


def _read_error(path: Path, suffix: str, err: BaseException) -> str:
    """One line naming the file, what is wrong and (for JSON Lines) the line number."""
    if not _has_rows(path, suffix):
        return f"{path} has no data rows: add rows (a CSV needs a header line, then one per row)."
    if suffix in (".jsonl", ".ndjson", ".json"):
        line = _bad_json_line(path)
        if line is not None:
            return f"Cannot read {path}: line {line[0]} {line[1]}."
    cause = err.__cause__ or err.__context__ or err
    detail = " ".join(str(cause).split()) or type(cause).__name__
    return f"Cannot read {path} as {suffix[1:]}: {detail}"


def _has_rows(path: Path, suffix: str) -> bool:
    """False for a text file with no line (JSON) or no line after the header (CSV/TSV)."""
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
        return True
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return True
    return len(lines) > (1 if suffix in (".csv", ".tsv") else 0)


def _bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first line that is not one JSON object, if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return 1, str(err)
    try:
        json.loads(text)  # a .json file holding one array or object is fine as a whole
        return None
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return number, f"is not valid JSON ({err.msg})"
            if not isinstance(value, dict):
                return number, f"is a JSON {type(value).__name__}, not an object of column: value"
            for column in CHAT_COLUMNS:
                if column in value and not isinstance(value[column], list):
                    kind = type(value[column]).__name__
                    return number, f"has {column} as a {kind}, not a list of turns"
    return None


def find_split_files(folder: Path) -> tuple[Path, Path | None]:
    """train.<ext> and an optional test/eval/validation/valid/dev.<ext> inside a folder."""

    def find(stem: str) -> Path | None:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.lower().split(".")[0] == stem:
                try:
                    file_format(path)
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


def _flag(arg: str) -> str:
    """How a column option is named: the CLI flag, then load_data's keyword."""
    return f"--{arg.replace('_', '-')} NAME ({arg}= in Python)"


def _pick(
    data: Dataset, explicit: str | None, candidates: Sequence[str], arg: str, hint: str = ""
) -> str | None:
    """The column to use: the explicit one (checked), the file's hint, else a known name."""
    columns: list[str] = [str(c) for c in data.column_names]
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(
                f"Column {explicit!r} (--{arg.replace('_', '-')}) not found; columns found: "
                f"{', '.join(columns)}."
            )
        return explicit
    if hint:
        return hint
    lower = {c.lower(): c for c in reversed(columns)}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    return None


def _no_column(
    data: Dataset, source: Path, what: str, candidates: Sequence[str], args: str
) -> ValueError:
    """The error for a column that could not be detected."""
    columns = ", ".join(data.column_names)
    return ValueError(
        f"{source}: No {what} column found (looked for {', '.join(candidates)}); columns "
        f"found: {columns}. Pass {args}."
    )


def _is_text(data: Dataset, column: str) -> bool:
    """True for a string column."""
    return getattr(data.features[column], "dtype", "") in ("string", "large_string")


def _prompt_response(
    data: Dataset, prompt: str, response: str, source: Path
) -> dict[str, list[Any]]:
    """prompt/response columns as strings; Alpaca's optional input follows the instruction."""
    prompts = data[prompt]
    extra = _pick(data, None, ("input",), "")
    if prompt.lower() == "instruction" and extra not in (None, response):
        prompts = [
            str(p) if is_missing(x) else f"{p}\n\n{x}"
            for p, x in zip(prompts, data[extra], strict=True)
        ]
    rows = pairs(prompts, data[response], ("prompt", "response"), source)
    return {k: [str(v) for v in vals] for k, vals in rows.items()}


def _row_names(source: Path, rows: int) -> list[str]:
    """How to name each row in an error: its line in a JSON Lines file, else its row number."""
    if file_format(source) in (".jsonl", ".ndjson"):
        try:
            text = source.read_text(encoding="utf-8")
            lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
            if len(lines) == rows:
                return [f"line {n}" for n in lines]
        except (OSError, UnicodeDecodeError):
            pass
    return [f"row {i + 1}" for i in range(rows)]


def _chat_turns(turns: Any, keys: tuple[str, str], column: str, where: str) -> list[dict[str, str]]:
    """One conversation as [{"role", "content"}], checked: a list, known roles, an assistant."""
    role_key, text_key = keys
    example = f'{{"{role_key}": "user", "{text_key}": "..."}}'
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if isinstance(turns, list) else f"a {type(turns).__name__}"
        raise ValueError(f"{where}: {column} is {got}, not a list of turns like [{example}, ...].")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str):
            raise ValueError(f"{where}: each turn of {column} must be an object like {example}.")
        role = CHAT_ROLES.get(str(turn.get(role_key)).strip().lower())
        if role is None:
            known = ", ".join(CHAT_ROLES)
            raise ValueError(
                f"{where}: unknown role {turn.get(role_key)!r} in {column}; use one of {known}."
            )
        out.append({"role": role, "content": turn[text_key]})
    if not any(t["role"] == "assistant" for t in out):
        raise ValueError(
            f"{where}: the conversation has no assistant turn, so nothing would be trained; add "
            "the assistant's reply or drop the row."
        )
    return out


def _chat_rows(data: Dataset, column: str, source: Path) -> dict[str, list[Any]]:
    """A messages/conversations column as checked {"messages": [[{"role", "content"}, ...]]}."""
    names = _row_names(source, len(data))
    keys = CHAT_COLUMNS[column.lower()]
    rows = [
        _chat_turns(turns, keys, column, f"{source} {where}")
        for turns, where in zip(data[column], names, strict=True)
    ]
    return {"messages": rows}


def chat_dataset(columns: dict[str, list[Any]]) -> Dataset:
    """{"messages": [...]} rows as a Dataset (turns keep only role and content)."""
    from datasets import Dataset

    return Dataset.from_dict(columns)


def table_columns(
    data: Dataset,
    hints: dict[str, str],
    task: str,
    source: Path,
    columns: dict[str, str | None],
) -> dict[str, list[Any]]:
    """A file's rows as text/label (labels still raw) or prompt/response columns."""
    if task == "causal-lm":
        chat = next((c for c in data.column_names if c.lower() in CHAT_COLUMNS), None)
        if chat is not None and columns["prompt"] is None and columns["response"] is None:
            return _chat_rows(data, chat, source)
        prompt = _pick(data, columns["prompt"], PROMPT_COLUMNS, "prompt_column")
        response = _pick(data, columns["response"], RESPONSE_COLUMNS, "response_column")
        if prompt is not None and response is not None:
            return _prompt_response(data, prompt, response, source)
        if prompt is None and columns["response"] is not None:
            raise _no_column(data, source, "prompt", PROMPT_COLUMNS, _flag("prompt_column"))
        if response is None and columns["prompt"] is not None:
            raise _no_column(data, source, "response", RESPONSE_COLUMNS, _flag("response_column"))
        # else: a labelled text file, turned into prompt/answer pairs by the caller
    label = _pick(data, columns["label"], LABEL_COLUMNS, "label_column", hints.get("label", ""))
    text = _pick(data, columns["text"], TEXT_COLUMNS, "text_column", hints.get("text", ""))
    if text is None:
        strings = [c for c in data.column_names if c != label and _is_text(data, c)]
        if len(strings) == 1:  # the only string column is obviously the text
            text = strings[0]
    if text is None:
        if task == "causal-lm":
            raise _no_column(
                data,
                source,
                "prompt/response or text",
                PROMPT_COLUMNS + RESPONSE_COLUMNS + TEXT_COLUMNS,
                "--prompt-column and --response-column (or --text-column and --label-column)",
            )
        fix = _flag("text_column")
        if _pick(data, None, PROMPT_COLUMNS, "") and _pick(data, None, RESPONSE_COLUMNS, ""):
            fix += ", or --task causal-lm to fine-tune on its prompt and response"
        raise _no_column(data, source, "text", TEXT_COLUMNS, fix)
    if label is None:
        raise _no_column(data, source, "label", LABEL_COLUMNS, _flag("label_column"))
    rows = pairs(data[text], data[label], ("text", "label"), source)
    return {"text": [str(t) for t in rows["text"]], "label": rows["label"]}
