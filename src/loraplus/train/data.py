"""Tokenization and collation of a run's data (classification or causal-LM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


from loraplus.zoo.table import quiet_datasets

IGNORE_INDEX = -100


def _causal_example(
    prompt: list[int], response: list[int], max_length: int, bos: int | None
) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 on the prompt) within max_length; the prompt's end is kept."""
    if len(prompt) + len(response) > max_length:
        response = response[: max(1, max_length // 2)]
    budget = max_length - len(response)
    if len(prompt) > budget:
        keep_bos = bos is not None and bool(prompt) and prompt[0] == bos and budget > 1
        tail = prompt[len(prompt) - (budget - 1 if keep_bos else budget) :] if budget > 0 else []
        prompt = ([bos] if keep_bos and bos is not None else []) + tail
    return prompt + response, [IGNORE_INDEX] * len(prompt) + list(response)


def tokenize(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int
) -> Dataset:
    """Token ids for a text/label (classification) or prompt/response (causal-lm) dataset.

    Causal-LM rows get labels equal to the ids on the response (plus EOS) and -100 on the prompt.
    """
    if task == "classification":

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            out = tokenizer(batch["text"], truncation=True, max_length=max_length)
            return {**out, "labels": batch["label"]}

    else:
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            prompts = tokenizer(batch["prompt"], add_special_tokens=True)["input_ids"]
            responses = tokenizer(batch["response"], add_special_tokens=False)["input_ids"]
            ids, labels = [], []
            for p, r in zip(prompts, responses, strict=True):
                x, y = _causal_example(p, r + ([eos] if eos is not None else []), max_length, bos)
                ids.append(x)
                labels.append(y)
            mask = [[1] * len(x) for x in ids]
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    with quiet_datasets():
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def collator(tokenizer: PreTrainedTokenizerBase, task: str) -> Any:
    """transformers' collator for the task: dynamic padding; causal-LM labels padded with -100."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task == "classification":
        return DataCollatorWithPadding(tokenizer)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def _by_length(dataset: Dataset) -> Dataset:
    """Eval rows sorted by length, so dynamic padding pads little (metrics do not change)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))
