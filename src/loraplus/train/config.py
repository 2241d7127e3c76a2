"""TrainConfig: every setting of one run (each a `loraplus train` flag and config-file key)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import SchedulerType

from loraplus import _config, zoo
from loraplus.data import TASKS
from loraplus.init import SCHEMES
from loraplus.roles import as_role
from loraplus.settings import LoraPlusSettings, as_ratio, settings_field

SCHEDULERS = tuple(s.value for s in SchedulerType)


def ratio(text: str) -> float | str:
    """The --ratio flag: a number > 0 or "auto" (argparse shows this error's own message)."""
    try:
        return as_ratio(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} Use a number > 0 or auto.") from None


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything one training run needs; every field is a `loraplus train` flag."""

    model: str = field(default="minilm", metadata=_help("built-in name, local folder or hub id"))
    data: str = field(
        default="rotten-tomatoes",
        metadata=_help("built-in dataset, data file, or folder with train.csv (+ test.csv)"),
    )
    task: str = field(
        default="auto",
        metadata=_help(
            "classification, causal-lm, or auto: the model decides (a decoder-only LM, "
            "*ForCausalLM, means causal-lm)"
        ),
    )
    eval_data: str | None = field(
        default=None,
        metadata=_help(
            "eval file (CSV/JSONL/Parquet); default: test/eval/validation.<ext> beside "
            "train.<ext> in a --data folder, else a split of --data drawn with --seed"
        ),
    )
    text_column: str | None = field(default=None, metadata=_help("text column of a data file"))
    label_column: str | None = field(default=None, metadata=_help("label column of a data file"))
    prompt_column: str | None = field(
        default=None, metadata=_help("prompt column of a data file (causal-lm)")
    )
    response_column: str | None = field(
        default=None, metadata=_help("response column of a data file (causal-lm)")
    )
    overwrite: bool = field(
        default=False,
        metadata=_help("replace a run already in --output-dir (its metrics, adapter and logs)"),
    )
    # --- the LoRA+ settings: defaults and help from loraplus.settings.LoraPlusSettings ---
    lr: float = settings_field("lr", default=2e-4)
    ratio: float | str = settings_field("ratio", argtype=ratio)
    lr_embedding: float | None = settings_field("lr_embedding")
    lr_multipliers: list[str] | None = settings_field("lr_multipliers")
    lr_roles: list[str] | None = settings_field("lr_roles")
    width_aware: bool = settings_field("width_aware")
    n_ref: float | None = settings_field("n_ref")
    rank: int = field(default=8, metadata=_help("LoRA rank r"))
    alpha: float = field(default=16.0, metadata=_help("LoRA alpha (scale alpha / r)"))
    dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    target_modules: list[str] | None = field(
        default=None,
        metadata=_help("modules to adapt (names, or all-linear); default: per architecture"),
    )
    init: str = settings_field(
        "init",
        default="init1",
        help="init1 (B = 0), init2 (A = 0) or pissa (peft's PiSSA: principal singular vectors)",
    )
    rslora: bool = field(
        default=False, metadata=_help("rsLoRA: scale alpha / sqrt(r) instead of alpha / r (peft)")
    )
    lora_optimizer: str = field(
        default="loraplus",
        metadata=_help(
            "loraplus (per-role lrs), or peft's lorafa (A frozen) or riemannian (r x r "
            "preconditioned AdamW): these two use --lr for every LoRA param"
        ),
    )
    epochs: float = field(default=1.0, metadata=_help("epochs (ignored when max-steps > 0)"))
    max_steps: int = field(default=-1, metadata=_help("optimizer steps; -1 = use epochs"))
    batch_size: int = field(default=16, metadata=_help("per-device train batch size"))
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps"))
    max_length: int | None = field(
        default=None,
        metadata=_help(
            "truncate examples to this many tokens (default: 64 for classification; 1024 for "
            "causal-lm, capped by the tokenizer's limit); truncated causal-LM examples are counted"
        ),
    )
    eval_batch_size: int | None = field(
        default=None,
        metadata=_help(
            "per-device eval batch size (default: max(64, batch) for classification, "
            "batch size for causal-lm)"
        ),
    )
    dataloader_workers: int = field(
        default=0, metadata=_help("data loader worker processes (0: load in the main process)")
    )
    eval_steps: int = field(default=50, metadata=_help("evaluate every this many steps"))
    seed: int = field(
        default=0,
        metadata=_help(
            "seed of the head and LoRA init, dropout and, unless --data-seed, of the data"
        ),
    )
    data_seed: int | None = field(
        default=None,
        metadata=_help(
            "seed of the shuffle, --max-train and a split of one data file (default: --seed); "
            "fix it to vary only the init across seeds"
        ),
    )
    output_dir: str = field(default="runs/train", metadata=_help("where outputs are written"))
    optimizer: str = field(default="adamw_torch", metadata=_help("HF optim name"))
    scheduler: str = field(default="linear", metadata=_help("HF lr scheduler name"))
    warmup_ratio: float = field(default=0.0, metadata=_help("fraction of steps of lr warmup"))
    weight_decay: float = field(default=0.0, metadata=_help("weight decay of the matrices"))
    max_train: int | None = field(default=None, metadata=_help("at most this many train rows"))
    max_eval: int | None = field(
        default=None,
        metadata=_help("at most this many eval rows: a stratified subset, the same for any seed"),
    )
    save_adapter: bool = field(default=True, metadata=_help("save the adapter (PEFT format)"))
    merge: bool = field(default=False, metadata=_help("also save the merged full model"))
    probe_every: int = field(
        default=0,
        metadata=_help("every k steps record δ¹ (A) and δ² (B), the paper's feature-update terms"),
    )
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata=_help("logging integrations (tensorboard, wandb, ...) or none"),
    )
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    deepspeed: str | None = field(
        default=None,
        metadata=_help(
            "DeepSpeed config JSON (ZeRO-2/3, no optimizer/scheduler block); launch with "
            "torchrun or deepspeed"
        ),
    )
    # --- causal-LM data, precision and memory (train/data.py, model.py; README "Fine-tune an LLM")
    chat_template: str | None = field(
        default=None,
        metadata=_help(
            "chat template: a Jinja file, a template string, or none (plain prompt + response); "
            "default: the tokenizer's own"
        ),
    )
    train_on_prompt: bool = field(
        default=False,
        metadata=_help("causal-lm: every token carries loss (default: only assistant/response)"),
    )
    packing: bool = field(
        default=False,
        metadata=_help("causal-lm: pack examples into --max-length blocks (TRL's packing)"),
    )
    exact_match: bool = field(
        default=False,
        metadata=_help(
            "causal-lm: also score eval_exact_match at each evaluation, the share of eval "
            "answers greedy decoding reproduces token for token (through EOS)"
        ),
    )
    preview_data: int = field(
        default=0,
        metadata=_help(
            "print the first N training examples after all processing as JSON lines "
            '({"text": ..., "trained": the tokens that carry loss}) and exit; 0: off'
        ),
    )
    bf16: bool = field(default=False, metadata=_help("bfloat16 mixed precision (autocast)"))
    fp16: bool = field(
        default=False, metadata=_help("float16 mixed precision with loss scaling (GPU only)")
    )
    dtype: str = field(
        default="auto",
        metadata=_help("dtype of the base model's weights: auto, float32, bfloat16 or float16"),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help("recompute activations in the backward pass: less memory, slower steps"),
    )
    load_in_4bit: bool = field(
        default=False,
        metadata=_help(
            "QLoRA: a 4-bit NF4 base (double quantization; bitsandbytes), compute in bf16/fp16 "
            "with --bf16/--fp16"
        ),
    )
    load_in_8bit: bool = field(
        default=False, metadata=_help("an 8-bit base model (bitsandbytes LLM.int8)")
    )
    torch_compile: bool = field(
        default=False, metadata=_help("compile the model with torch.compile (the Trainer's)")
    )
    torch_compile_backend: str = field(
        default="inductor",
        metadata=_help("torch.compile backend with --torch-compile (inductor, aot_eager, ...)"),
    )
    # --- checkpoints, resume, divergence guard, safe loading (train/checkpoint.py, guard.py) ---
    save_steps: int = field(
        default=0, metadata=_help("write a complete checkpoint every N steps (0: none)")
    )
    save_total_limit: int | None = field(
        default=None, metadata=_help("keep only the newest K checkpoints (default: all)")
    )
    resume: str | None = field(
        default=None,
        metadata=_help("auto (latest complete checkpoint in --output-dir, if any) or a path"),
    )
    early_stopping_patience: int = field(
        default=0,
        metadata=_help("stop after this many evaluations without a better eval metric (0: never)"),
    )
    divergence_factor: float = field(
        default=10.0,
        metadata=_help("stop (exit 3) when the train loss exceeds this x the first logged loss"),
    )
    allow_pickle: bool = field(
        default=False,
        metadata=_help("load a model folder that has only pickle weights (weights_only loading)"),
    )

    def __post_init__(self) -> None:
        """Normalize the list fields and check every value (make_config types them first)."""
        self.target_modules = _targets(self.target_modules)
        self.lr_multipliers = _pairs(self.lr_multipliers, "lr_multipliers")
        self.lr_roles = _pairs(self.lr_roles, "lr_roles")
        self.report_to = [r for r in self.report_to if r.lower() != "none"]
        self.task = resolve_task(self.task, self.model)
        self._check()
        _check_llm(self)
        self._check_run_safety()

    def multipliers(self) -> dict[str, float]:
        """lr_multipliers as {role: multiplier}."""
        return _config.as_pairs(self.lr_multipliers, "lr_multipliers")

    def role_lrs(self) -> dict[str, float]:
        """lr_roles as {role: absolute lr}."""
        return _config.as_pairs(self.lr_roles, "lr_roles")

    def settings(self) -> LoraPlusSettings:
        """This run's LoRA+ settings (validated there). init is the scheme the Trainer
        re-initializes adapters with: None where peft's own init stays, PiSSA (set at load) and
        LoRA-FA (its frozen A keeps peft's draw, which is Init[1])."""
        keep = self.init not in SCHEMES or self.lora_optimizer == "lorafa"
        return LoraPlusSettings(
            lr=self.lr,
            ratio=self.ratio,
            lr_embedding=self.lr_embedding,
            lr_multipliers=self.multipliers() or None,
            lr_roles=self.role_lrs() or None,
            width_aware=self.width_aware,
            n_ref=self.n_ref,
            init=None if keep else self.init,
        )

    def seed_of_data(self) -> int:
        """The seed of the data (shuffle, subsets, split): data_seed, else seed."""
        return self.seed if self.data_seed is None else self.data_seed

    def _check(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of auto, {', '.join(TASKS)}, got {self.task!r}.")
        settings = self.settings()
        self.ratio, self.lr, self.n_ref = settings.ratio, settings.lr, settings.n_ref
        self.lr_embedding = settings.lr_embedding
        positive = {"alpha": self.alpha}
        positive.update({"epochs": self.epochs} if self.max_steps <= 0 else {})
        for name, value in positive.items():
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
        at_least_one = {
            "rank": self.rank,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "eval_steps": self.eval_steps,
        }
        for name in ("max_length", "eval_batch_size"):
            value = getattr(self, name)
            at_least_one.update({name: value} if value is not None else {})
        at_least_one.update({"max_train": self.max_train} if self.max_train is not None else {})
        at_least_one.update({"max_eval": self.max_eval} if self.max_eval is not None else {})
        for name, number in at_least_one.items():
            if number < 1:
                raise ValueError(f"{name} must be >= 1, got {number!r}.")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 (0: off), got {self.probe_every}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"max_steps must be > 0, or -1 to train for `epochs`, got {self.max_steps}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if not self.weight_decay >= 0.0 or not math.isfinite(self.weight_decay):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.init not in (*SCHEMES, "pissa"):
            raise ValueError(f"init must be one of {', '.join(SCHEMES)}, pissa, got {self.init!r}.")
        _check_lora_optimizer(self)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}."
            )
        _check_optimizer(self.optimizer)
        _check_columns(self)

    def _check_run_safety(self) -> None:
        """Checks of the checkpoint, resume and divergence settings."""
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}.")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(
                f"save_total_limit must be >= 1 (or unset: keep all), got {self.save_total_limit}."
            )
        if self.early_stopping_patience < 0:
            raise ValueError(
                "early_stopping_patience must be >= 0 (0: off), "
                f"got {self.early_stopping_patience}."
            )
        if self.resume is not None and not self.resume.strip():
            raise ValueError("resume is empty: pass --resume auto or a checkpoint folder.")
        if not self.divergence_factor > 1.0:
            raise ValueError(
                "divergence_factor must be > 1 (inf: no loss bound), "
                f"got {self.divergence_factor!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML-able values (make_config(**d) rebuilds it)."""
        return dataclasses.asdict(self)


def _check_optimizer(name: str) -> None:
    """optimizer is one of transformers' TrainingArguments.optim names."""
    from transformers.training_args import OptimizerNames

    names = [o.value for o in OptimizerNames]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(
            f"optimizer {name!r} is not a transformers optim name.{hint} Valid: {', '.join(names)}."
        )


def _check_lora_optimizer(cfg: TrainConfig) -> None:
    """lorafa / riemannian bring their own update rule: the LoRA+ lr options do not apply."""
    from loraplus.train.methods import LORA_OPTIMIZERS

    if cfg.lora_optimizer not in LORA_OPTIMIZERS:
        raise ValueError(
            f"lora_optimizer must be one of {', '.join(LORA_OPTIMIZERS)}, "
            f"got {cfg.lora_optimizer!r}."
        )
    if cfg.lora_optimizer == "loraplus":
        return
    given = [
        name
        for name, on in (
            ("--ratio auto", cfg.ratio == "auto"),
            ("--width-aware", cfg.width_aware),
            ("--lr-multipliers", bool(cfg.lr_multipliers)),
            ("--lr-embedding", cfg.lr_embedding is not None),
            ("--probe-every", cfg.probe_every > 0),
            ("--deepspeed", cfg.deepspeed is not None),
        )
        if on
    ]
    if given:
        raise ValueError(
            f"--lora-optimizer {cfg.lora_optimizer} trains every LoRA param at --lr with its own "
            f"update rule, so {', '.join(given)} cannot apply: drop them (--lr-roles still sets "
            "a head's lr)."
        )
    if cfg.lora_optimizer == "lorafa" and cfg.init == "init2":
        raise ValueError(
            "--lora-optimizer lorafa freezes A, and --init init2 sets A = 0: nothing would "
            "learn. Use --init init1 (peft's init) or pissa."
        )
    if cfg.optimizer != "adamw_torch":
        raise ValueError(
            f"--lora-optimizer {cfg.lora_optimizer} is AdamW-based: leave --optimizer at "
            f"adamw_torch (got {cfg.optimizer})."
        )


def _check_columns(cfg: TrainConfig) -> None:
    """Column options name a column (not blank) and fit the task."""
    for name in ("text_column", "label_column", "prompt_column", "response_column"):
        value = getattr(cfg, name)
        if value is not None and not str(value).strip():
            raise ValueError(f"{name} is blank: name a column of the data file, or leave it out.")
    pair = [n for n in ("prompt_column", "response_column") if getattr(cfg, n) is not None]
    if pair and cfg.task != "causal-lm":
        flags = " and ".join(f"--{n.replace('_', '-')}" for n in pair)
        raise ValueError(f"{flags} apply to --task causal-lm; this run's task is {cfg.task}.")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _model_config_file(model: str) -> Path | None:
    """The config.json of a local model folder or of a hub id in the local cache, if any."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
        return path if path.is_file() else None
    if model.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def resolve_task(task: str, model: str) -> str:
    """task, or for "auto" the model's: causal-lm for a decoder-only LM, else classification.

    A built-in model names its task; a folder or cached hub id is read from config.json's
    `architectures` (`*ForCausalLM`, `*LMHeadModel`). Unknown models stay classification.
    """
    if task != "auto":
        return task
    spec = zoo.find_model(model)
    if spec is not None:
        return str(spec.task)
    path = _model_config_file(model)
    if path is None:
        return "classification"
    try:
        architectures = json.loads(path.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return "classification"
    decoder = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return "causal-lm" if decoder else "classification"


def _check_llm(cfg: TrainConfig) -> None:
    """The causal-LM, precision and memory settings: values, pairs that exclude each other."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}.")
    if cfg.bf16 and cfg.fp16:
        raise ValueError("--bf16 and --fp16 exclude each other: pass one.")
    if cfg.load_in_4bit and cfg.load_in_8bit:
        raise ValueError("--load-in-4bit and --load-in-8bit exclude each other: pass one.")
    for name in ("dataloader_workers", "preview_data"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}.")
    if cfg.chat_template is not None and not cfg.chat_template.strip():
        raise ValueError("chat_template is blank: pass a Jinja file, a template string, or none.")
    if cfg.task == "classification":
        given = [
            flag
            for flag, on in (
                ("--packing", cfg.packing),
                ("--chat-template", cfg.chat_template is not None),
                ("--train-on-prompt", cfg.train_on_prompt),
                ("--exact-match", cfg.exact_match),
            )
            if on
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to --task causal-lm (a decoder LM); this run's task "
                "is classification: drop them, or pass --task causal-lm with a causal LM."
            )
    elif cfg.exact_match and (cfg.packing or cfg.train_on_prompt):
        raise ValueError(
            "--exact-match scores each eval row's answer: drop --packing and --train-on-prompt "
            "(they mix rows or put loss on the prompt), or drop --exact-match."
        )


def _targets(value: list[str] | str | None) -> list[str] | None:
    """target_modules: None, ["all-linear"], or module names ("q,v" -> ["q", "v"])."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = [v for item in items for v in str(item).replace(",", " ").split()]
    if not names:
        raise ValueError("target_modules is empty: pass module names (query value) or all-linear.")
    if any(n.lower().replace("_", "-") == "all-linear" for n in names):
        if len(names) > 1:
            raise ValueError(f"target_modules: all-linear cannot be combined with {names}.")
        return ["all-linear"]
    return names


def _pairs(value: list[str] | None, name: str) -> list[str] | None:
    """lr_multipliers / lr_roles as canonical "role=x" items, each role and number checked."""
    if value is None:
        return None
    pairs = _config.as_pairs(value, name)
    return [f"{as_role(role).value}={number:.10g}" for role, number in pairs.items()]


def make_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a YAML/TOML file (optional), then `overrides`, typed as the flags are."""
    cfg: TrainConfig = _config.build(TrainConfig, path, **overrides)
    return cfg
