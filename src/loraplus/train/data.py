"""A run's data as the trainer takes it: classification tokenized here, causal-LM rows in TRL's
formats (SFTTrainer tokenizes them: chat template, assistant / completion-only loss, packing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


from loraplus.data.table import quiet_datasets

IGNORE_INDEX = -100
CLASSIFICATION_MAX_LENGTH = 64  # sentences and reviews: the classifier sees their start
CAUSAL_MAX_LENGTH = 1024  # instruction data: prompt and answer whole (TRL's default)


def tokenize(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int
) -> Dataset:
    """Token ids and labels of a text/label dataset, truncated to max_length (classification).

    Causal-LM rows are not tokenized here: `sft_rows` gives them to TRL's SFTTrainer.
    """
    if task != "classification":
        raise ValueError("tokenize() takes classification data; causal-LM rows go to sft_rows().")

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {**out, "labels": batch["label"]}

    with quiet_datasets():
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def collator(tokenizer: PreTrainedTokenizerBase, task: str = "classification") -> Any:
    """transformers' collator for classification: dynamic padding."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def _by_length(dataset: Dataset) -> Dataset:
    """Eval rows sorted by length, so dynamic padding pads little (metrics do not change)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def max_length_for(task: str, max_length: int | None, tokenizer: Any) -> int:
    """--max-length, else the task's default capped by the tokenizer's own limit."""
    if max_length is not None:
        return max_length
    if task == "classification":
        return CLASSIFICATION_MAX_LENGTH
    limit = getattr(tokenizer, "model_max_length", None)
    return (
        min(CAUSAL_MAX_LENGTH, limit) if isinstance(limit, int) and limit > 0 else CAUSAL_MAX_LENGTH
    )


# --- causal LM: chat templates and TRL's dataset formats -----------------------------------------

_TEMPLATE_CHECK = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name the capital city of Japan."},
    {"role": "assistant", "content": "Tokyo."},
]


def set_chat_template(tokenizer: Any, option: str | None) -> None:
    """Apply --chat-template to the tokenizer: a Jinja file, a template string, or none.

    None keeps the tokenizer's own template (if any).
    """
    if option is None:
        return
    text = option.strip()
    if text.lower() == "none":
        tokenizer.chat_template = None
        return
    path = Path(text).expanduser()
    if "{{" not in text and "{%" not in text:
        if not path.is_file():
            raise ValueError(
                f"--chat-template {option!r} is not a file, a Jinja template string (with "
                "{{ ... }} or {% ... %}), or none."
            )
        text = path.read_text(encoding="utf-8")
    tokenizer.chat_template = text


def check_chat_template(tokenizer: Any, example: list[dict[str, str]] | None) -> None:
    """The chat template renders a conversation (the data's first, else a sample) to text."""
    template = tokenizer.chat_template
    if template is None:
        return
    for turns in ([example] if example else []) + [_TEMPLATE_CHECK]:
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False)
        except Exception as err:  # jinja2's TemplateError and whatever the template raises
            detail = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(
                f"The chat template does not render a conversation ({type(err).__name__}: "
                f"{detail}); fix --chat-template, or pass --chat-template none for plain "
                "prompt + response text."
            ) from None
        if not isinstance(text, str) or turns[-1]["content"] not in text:
            raise ValueError(
                "The chat template renders a conversation without its messages' content; fix "
                "--chat-template (it must print message['content'])."
            )


def marks_assistant(tokenizer: Any) -> bool:
    """True when TRL can mask assistant turns with the template: it has {% generation %}
    markers, or TRL ships a training version of it."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if template is None:
        return False
    if has_generation_markers(template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except ValueError:  # "patching is not supported for this template"
        return False


def _turn_examples(turns: list[dict[str, str]]) -> list[dict[str, Any]]:
    """A conversation as one prompt/completion example per assistant turn (its history first)."""
    return [
        {"prompt": turns[:i], "completion": [turn]}
        for i, turn in enumerate(turns)
        if turn["role"] == "assistant" and i > 0
    ]


def sft_rows(dataset: Dataset, tokenizer: Any, train_on_prompt: bool) -> Dataset:
    """The run's causal-LM rows in one of TRL's SFT formats.

    - messages: kept as they are when every token trains (--train-on-prompt) or the template
      marks assistant turns ({% generation %}); otherwise each assistant turn becomes one
      prompt/completion example whose prompt is the conversation before it, so every assistant
      turn carries loss with any template.
    - prompt/response: a user turn and an assistant turn when the tokenizer has a chat template,
      else plain text: the prompt, a space, the response (TRL appends EOS to it).
    """
    from datasets import Dataset

    chat = tokenizer.chat_template is not None
    columns = dataset.column_names
    if "messages" in columns:
        if not chat:
            raise ValueError(
                "The data holds chat messages but the tokenizer has no chat template: pass "
                "--chat-template FILE (a Jinja template, e.g. the chat_template of an instruct "
                "model of the same family) or a template string."
            )
        if train_on_prompt or marks_assistant(tokenizer):
            return dataset.select_columns(["messages"])
        rows = [ex for turns in dataset["messages"] for ex in _turn_examples(turns)]
        return Dataset.from_list(rows)
    prompts, responses = dataset["prompt"], dataset["response"]
    if chat:
        return Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": p.strip()}] for p in prompts],
                "completion": [[{"role": "assistant", "content": r.strip()}] for r in responses],
            }
        )
    # plain text: TRL joins the strings, so a space keeps the last prompt word and the first
    # response word apart (unless one side already has whitespace there)
    spaced = [
        r if not p or p[-1].isspace() or not r or r[0].isspace() else " " + r
        for p, r in zip(prompts, responses, strict=True)
    ]
    return Dataset.from_dict({"prompt": list(prompts), "completion": spaced})


def first_conversation(dataset: Dataset) -> list[dict[str, str]] | None:
    """The first row as chat turns (for checking the template), or None for plain rows."""
    if not len(dataset):
        return None
    row = dataset[0]
    if "messages" in row:
        return list(row["messages"])
    return [
        {"role": "user", "content": str(row["prompt"]).strip()},
        {"role": "assistant", "content": str(row["response"]).strip()},
    ]


def preview_rows(
    dataset: Dataset, tokenizer: Any, n: int, label_names: list[str] | None = None
) -> list[dict[str, str]]:
    """The first n processed examples: the decoded input, and the decoded tokens with loss
    (a classifier's: the label's name)."""
    rows = []
    for example in dataset.select(range(min(n, len(dataset)))):
        ids = list(example["input_ids"])
        labels = example["labels"]
        if isinstance(labels, int):  # classification: the label is the target
            trained = label_names[labels] if label_names else str(labels)
        else:
            trained = tokenizer.decode([i for i, y in zip(ids, labels, strict=True) if y != -100])
        rows.append({"text": tokenizer.decode(ids), "trained": trained})
    return rows


def truncation_warning(counts: dict[str, int], max_length: int) -> str | None:
    """One line saying how many training examples truncation cut (None when it cut none)."""
    if not counts.get("truncated"):
        return None
    dropped = counts.get("dropped", 0)
    also = f", {dropped} kept no trained token and were dropped" if dropped else ""
    return (
        f"{counts['truncated']} of {counts['examples']} training examples were truncated to "
        f"--max-length {max_length}, {counts['lost_end']} lost their end of sequence{also}; "
        "raise --max-length"
    )


def dumps(row: dict[str, Any]) -> str:
    """One preview row as a JSON line (non-ASCII kept)."""
    return json.dumps(row, ensure_ascii=False)
