"""The LoRA methods a run (and `loraplus sweep --method`) can use, as TrainConfig settings.

LoRA+ at any ratio, auto and width-aware lrs are this library's; LoRA-FA and the Riemannian
preconditioner are peft's own optimizers (`peft.optimizers`), rsLoRA and PiSSA peft's scaling and
initialization (`use_rslora`, `init_lora_weights="pissa"`). `ratio=X` names plain LoRA+ at ratio X.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from loraplus.groups import as_float

LORA_OPTIMIZERS = ("loraplus", "lorafa", "riemannian")
RIEMANNIAN_REG = 1e-2  # peft's default damping of the r x r preconditioner

METHODS: dict[str, dict[str, Any]] = {
    "lora": {"ratio": 1.0},
    "loraplus": {"ratio": 16.0},
    "auto": {"ratio": "auto"},
    "width-aware": {"ratio": 16.0, "width_aware": True},
    "lorafa": {"ratio": 1.0, "lora_optimizer": "lorafa"},
    "riemannian": {"ratio": 1.0, "lora_optimizer": "riemannian"},
    "rslora": {"ratio": 1.0, "rslora": True},
    "pissa": {"ratio": 1.0, "init": "pissa"},
    "loraplus+rslora": {"ratio": 16.0, "rslora": True},
}


def method_settings(name: str) -> dict[str, Any]:
    """The TrainConfig settings of a method: a METHODS name, or `ratio=X` (LoRA+ at ratio X)."""
    key = name.strip().lower()
    if key in METHODS:
        return dict(METHODS[key])
    if key.startswith("ratio="):
        return {"ratio": as_float(key.partition("=")[2], f"method {name!r}")}
    raise ValueError(
        f"Unknown method {name!r}: use one of {', '.join(METHODS)}, or ratio=X (LoRA+ at ratio X)."
    )


def canonical(name: str) -> str:
    """The method's name as stored: lower case, `ratio=X` with X as %g."""
    key = name.strip().lower()
    if key in METHODS:
        return key
    return f"ratio={method_settings(key)['ratio']:g}"


def peft_optimizer(
    name: str, model: nn.Module, *, lr: float, weight_decay: float, lora: Any
) -> Optimizer:
    """peft's LoRA-FA or Riemannian optimizer (AdamW) for `model`; `lora`: its LoraConfig."""
    import torch
    from peft.optimizers import create_lorafa_optimizer, create_riemannian_optimizer

    peft_model: Any = model  # a PeftModel (typed as one by peft)
    if name == "lorafa":
        return create_lorafa_optimizer(
            peft_model, r=lora.r, lora_alpha=lora.lora_alpha, lr=lr, weight_decay=weight_decay
        )
    if name == "riemannian":
        return create_riemannian_optimizer(
            peft_model, torch.optim.AdamW, lr=lr, reg=RIEMANNIAN_REG, weight_decay=weight_decay
        )
    raise ValueError(f"lora_optimizer must be one of {', '.join(LORA_OPTIMIZERS)}, got {name!r}.")
