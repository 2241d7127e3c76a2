"""The run's model: a safetensors-only load (pickle weights refused unless allowed) plus LoRA."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

from loraplus import zoo
from loraplus.data import TaskData
from loraplus.train.config import TrainConfig

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weight_format(path: str, allow_pickle: bool) -> None:
    """Refuse a local model folder whose weights exist only as pickle files (torch.load)."""
    folder = Path(path)
    if not folder.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) refuses pickle-only repos
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") for name in files):
        return
    pickles = sorted(n for n in files if n.endswith(_PICKLE_SUFFIXES) and n != "training_args.bin")
    if pickles and not allow_pickle:
        raise ValueError(
            f"Model folder {path} has weights only as pickle ({', '.join(pickles)}), which can run "
            "code when loaded: convert them to safetensors, or pass --allow-pickle if you trust "
            "the files (they are then loaded with torch's weights_only loader)."
        )


def _default_targets(cfg: TrainConfig, model: Any) -> list[str] | str:
    """The built-in model's LoRA targets, else PEFT's per-architecture default, else all-linear."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

    key = cfg.model.strip().lower().replace("_", "-")
    for spec in zoo.MODELS.values():
        if key == spec.name or key in spec.aliases:
            return list(spec.lora_targets)
    model_type = getattr(model.config, "model_type", None)
    if model_type in known:
        return list(known[model_type])
    log.info("No default LoRA targets for model type %r: adapting all linear layers.", model_type)
    return "all-linear"


def _targets(cfg: TrainConfig) -> list[str] | str | None:
    """target_modules as PEFT takes them: a list of names, or the string "all-linear"."""
    names = cfg.target_modules
    return "all-linear" if names == ["all-linear"] else names


def _alpha(alpha: float) -> Any:
    """LoRA alpha as PEFT types it (an int) when it is whole; a float otherwise (PEFT takes it)."""
    return int(alpha) if float(alpha).is_integer() else alpha


def check_machine(cfg: TrainConfig) -> None:
    """Refuse settings this machine cannot run (before anything loads): --fp16 without a GPU,
    --bf16 on a GPU without bfloat16, a bitsandbytes base without bitsandbytes."""
    import importlib.util

    import torch

    gpu = torch.cuda.is_available()
    if cfg.fp16 and not gpu:
        raise ValueError(
            "--fp16 needs a CUDA GPU (float16 autocast with loss scaling); this machine has none: "
            "use --bf16 on a CPU, or drop --fp16."
        )
    if cfg.bf16 and gpu and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--bf16: this GPU ({torch.cuda.get_device_name()}) has no bfloat16; use --fp16."
        )
    if (cfg.load_in_4bit or cfg.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        flag = "--load-in-4bit" if cfg.load_in_4bit else "--load-in-8bit"
        raise ValueError(
            f"{flag} needs bitsandbytes (not installed): pip install bitsandbytes "
            '(or pip install "loraplus[bnb]").'
        )


def load_tokenizer(cfg: TrainConfig) -> Any:
    """The model's tokenizer, with a pad token (pad, else eos, else unk) and right padding."""
    from transformers import AutoTokenizer

    path = zoo.resolve_model(cfg.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise _cannot_load(cfg, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f"The tokenizer of {cfg.model!r} has no pad, eos or unk token.")
    tokenizer.padding_side = "right"
    return tokenizer


def _cannot_load(cfg: TrainConfig, err: BaseException) -> ValueError:
    return ValueError(
        f"Cannot load model {cfg.model!r} ({err}). Pass a built-in model "
        f"({', '.join(zoo.MODELS)}), a local folder, or a hub id that is in the local cache."
    )


def _compute_dtype(cfg: TrainConfig) -> Any:
    """The dtype a quantized base computes in: that of --bf16 / --fp16, else float32."""
    import torch

    return torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32


def load_options(cfg: TrainConfig) -> dict[str, Any]:
    """from_pretrained's dtype and quantization_config (bitsandbytes: NF4 4-bit with double
    quantization, or LLM.int8) for the config."""
    options: dict[str, Any] = {"dtype": cfg.dtype}
    if cfg.load_in_4bit or cfg.load_in_8bit:
        from transformers import BitsAndBytesConfig

        if cfg.load_in_4bit:
            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=_compute_dtype(cfg),
            )
        else:
            options["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return options


def precision(model: Any) -> dict[str, Any]:
    """What the base model was loaded as, for metrics.json: weight dtype and quantization."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quantization = None
    if getattr(base, "is_loaded_in_4bit", False):
        quantization = "nf4 (bitsandbytes 4-bit, double quantization)"
    elif getattr(base, "is_loaded_in_8bit", False):
        quantization = "int8 (bitsandbytes LLM.int8)"
    return {"base_dtype": str(base.dtype).removeprefix("torch."), "quantization": quantization}


def _keep_4bit_trainable(model: Any) -> None:
    """Keep bitsandbytes' 4-bit layers in their trainable layout on a CPU.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a Linear4bit's weight at its first
    no-grad forward in eval mode (the Trainer's first evaluation), for faster inference; every
    later forward then runs a kernel without autograd, and the LoRA tensors get no gradient at
    all, silently (measured: A and B never move). Training needs the unpacked layout.
    """
    if next(model.parameters()).device.type != "cpu":
        return
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model(cfg: TrainConfig, data: TaskData, tokenizer: Any) -> Any:
    """The PEFT model for the config's model and task; weights from safetensors.

    --dtype and --load-in-4bit/8bit go to from_pretrained; a quantized base is prepared for
    training by peft's prepare_model_for_kbit_training before LoRA is added.
    """
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        set_seed,
    )

    path = zoo.resolve_model(cfg.model)
    check_weight_format(path, cfg.allow_pickle)
    # None: safetensors when present, else pickle through torch's weights_only loader
    weights: dict[str, Any] = {"use_safetensors": None if cfg.allow_pickle else True}
    weights.update(load_options(cfg))
    set_seed(cfg.seed)  # the classifier head and LoRA A are drawn from here
    try:
        if cfg.task == "classification":
            names = data.label_names or [str(i) for i in range(max(data.num_labels, 2))]
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
                ignore_mismatched_sizes=True,
                **weights,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **weights)
    except pickle.UnpicklingError as err:  # only reachable with --allow-pickle
        first = str(err).strip().split(".")[0] or type(err).__name__
        raise ValueError(
            f"Refused to load the pickle weights of {cfg.model!r}: torch's weights_only loader "
            f"stopped them ({first}: they hold more than tensors). Use safetensors weights."
        ) from None
    except OSError as err:
        raise _cannot_load(cfg, err) from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.load_in_4bit:
        _keep_4bit_trainable(model)
    if cfg.load_in_4bit or cfg.load_in_8bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if cfg.task == "classification" else TaskType.CAUSAL_LM,
        r=cfg.rank,
        lora_alpha=_alpha(cfg.alpha),
        lora_dropout=cfg.dropout,
        target_modules=_targets(cfg) or _default_targets(cfg, model),
        use_rslora=cfg.rslora,
        init_lora_weights="pissa" if cfg.init == "pissa" else True,
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as err:
        raise ValueError(f"{err} (check --target-modules for {cfg.model!r})") from None
    if cfg.gradient_checkpointing:
        peft_model.enable_input_require_grads()  # the frozen embeddings' output needs a grad
    return peft_model
