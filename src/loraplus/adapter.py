"""Adapters that travel: saved with a base model name that resolves on any machine and with the
classifier's labels, loaded back in one call, and merged into a plain model.

PEFT's `adapter_config.json` names the base model (`base_model_name_or_path`) but not a
classifier's labels, and PEFT warns about keys it does not know there; so the labels go beside it,
in `labels.json` (`{"id2label": {"0": "neg", ...}, "label2id": {"neg": 0, ...}}`), in the form
`from_pretrained(..., id2label=..., label2id=...)` takes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loraplus._io import atomic_dir, write_json

LABELS_FILE = "labels.json"
ADAPTER_CONFIG = "adapter_config.json"


def portable_base(model: str | os.PathLike[str]) -> str:
    """The base model's name as an adapter records it: a built-in's name (`minilm`, resolved by
    `loraplus.zoo.resolve_model`, never its cache folder), a local folder's absolute path, else
    the hub id as given."""
    from loraplus.zoo.models import MODELS

    name = os.fspath(model)
    key = name.strip().lower().replace("_", "-")
    for spec in MODELS.values():
        if key == spec.name or key in spec.aliases:
            return spec.name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def save_adapter(model: Any, tokenizer: Any, folder: str | Path, *, base: str) -> Path:
    """Save a PEFT model's adapter, its tokenizer and (a classifier's) labels.json into `folder`
    atomically, with `base` as every adapter's base_model_name_or_path.

    PEFT saves first with the base it loaded (its check for resized embeddings reads that local
    config; a built-in's name would send it to the hub), then each saved config is rewritten."""
    from peft import PeftConfig

    labels = _labels_of(model)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)  # safetensors
        for name in model.peft_config:  # PEFT puts an adapter other than "default" in a sub-folder
            where = str(tmp if name == "default" else tmp / name)
            saved = PeftConfig.from_pretrained(where)
            saved.base_model_name_or_path = base
            saved.save_pretrained(where)
        tokenizer.save_pretrained(tmp)
        if labels:
            write_json(tmp / LABELS_FILE, labels)

    return atomic_dir(folder, build)


def _labels_of(model: Any) -> dict[str, Any]:
    """{"id2label", "label2id"} of a sequence classifier's config; {} for any other task."""
    configs = list(model.peft_config.values())
    if not configs or configs[0].task_type != "SEQ_CLS":
        return {}
    id2label = {int(i): str(name) for i, name in model.config.id2label.items()}
    return {
        "id2label": {str(i): id2label[i] for i in sorted(id2label)},
        "label2id": {name: i for i, name in sorted(id2label.items())},
    }


def read_labels(folder: str | Path) -> dict[str, Any]:
    """An adapter's labels as from_pretrained keywords: {"id2label": {0: "neg"}, "label2id":
    {"neg": 0}}; {} when it has none (a causal LM, or an adapter saved elsewhere)."""
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        "id2label": {int(i): str(n) for i, n in data["id2label"].items()},
        "label2id": {str(n): int(i) for n, i in data["label2id"].items()},
    }


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder of `path`: itself, or the `adapter/` of a run folder."""
    folder = Path(path).expanduser()
    for candidate in (folder, folder / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise ValueError(
        f"{path} holds no {ADAPTER_CONFIG}: pass an adapter folder, or a run folder of "
        "`loraplus train` that has adapter/ (not run with --no-save-adapter)."
    )


def load_adapter(path: str | Path) -> tuple[Any, Any]:
    """(PeftModel, tokenizer) of an adapter folder or a run folder: its base model (a built-in
    name resolved through `loraplus.zoo`), with the classifier's labels, then the adapter.

    Weights load from safetensors only."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from loraplus.zoo import resolve_model

    folder = adapter_folder(path)
    config = PeftConfig.from_pretrained(str(folder))
    base_name = config.base_model_name_or_path
    if not base_name:
        raise ValueError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path.")
    base = resolve_model(base_name)
    task = config.task_type
    if task not in ("SEQ_CLS", "CAUSAL_LM"):
        raise ValueError(
            f"{folder} is a {task} adapter; loraplus loads classification and causal-LM adapters."
        )
    try:
        if task == "SEQ_CLS":
            labels = read_labels(folder)
            # the base's own head may have another size: the adapter's saved head replaces it
            model = AutoModelForSequenceClassification.from_pretrained(
                base, **labels, ignore_mismatched_sizes=bool(labels), use_safetensors=True
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    except OSError as err:
        raise ValueError(
            f"Cannot load the base model {base_name!r} of {folder} ({err}). It must be a built-in "
            "model, a local folder with safetensors weights, or a hub id in the local cache."
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # as training set it
    return PeftModel.from_pretrained(model, str(folder)).eval(), tokenizer


def save_merged(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Merge a PeftModel's adapter into its base (peft's merge_and_unload) and save the plain
    model (safetensors, config with the labels) and the tokenizer into `folder` atomically."""
    merged = model.merge_and_unload()

    def build(tmp: Path) -> None:
        merged.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)

    return atomic_dir(folder, build)


def merge(path: str | Path, out: str | Path) -> Path:
    """Load the adapter of `path` (adapter or run folder) and write the merged model to `out`."""
    model, tokenizer = load_adapter(path)
    return save_merged(model, tokenizer, out)
