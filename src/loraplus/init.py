"""LoRA initialization: Init[1] (B = 0, A random) and Init[2] (A = 0, B random), paper §3.1.

Either keeps B·A = 0, so the model's output is unchanged. Random matrices use Kaiming-uniform
(a = sqrt(5), PEFT's and nn.Linear's default): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e.
A ~ U(±1/sqrt(n)) (variance 1/(3n)) under Init[1] and B ~ U(±1/sqrt(r)) (variance 1/(3r)) under
Init[2]. An embedding adapter's A is a lookup (fan-in 1): N(0, 1) under Init[1], as in PEFT.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from loraplus.roles import unwrap

Scheme = Literal["init1", "init2"]
SCHEMES: tuple[Scheme, ...] = ("init1", "init2")


def _kaiming_uniform_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    bound = 1.0 / math.sqrt(weight[0].numel())  # fan_in of a Linear / Conv / (dim, r) matrix
    weight.uniform_(-bound, bound, generator=generator)


def _adapter_pairs(
    layer: Any, adapter_name: str | None
) -> list[tuple[str, torch.Tensor, torch.Tensor, bool]]:
    """(adapter, A, B, is_embedding) for each trainable adapter of a PEFT LoRA layer."""
    pairs = []
    for key, a_mod in getattr(layer, "lora_A", {}).items():
        pairs.append((key, a_mod.weight, layer.lora_B[key].weight, False))
    for key, a_param in getattr(layer, "lora_embedding_A", {}).items():
        pairs.append((key, a_param, layer.lora_embedding_B[key], True))
    return [
        p for p in pairs if (adapter_name is None or p[0] == adapter_name) and p[1].requires_grad
    ]


@torch.no_grad()
def init_lora_(
    model: nn.Module,
    scheme: Scheme | str,
    *,
    adapter_name: str | None = None,
    generator: torch.Generator | None = None,
    force: bool = False,
) -> int:
    """Re-initialize every trainable PEFT LoRA adapter in place; returns how many were set.

    Refuses adapters whose B·A is not zero (PiSSA, OLoRA, LoftQ fold it into the base weight, so
    re-initializing would change the model) unless `force=True`.
    """
    from peft.tuners.lora import LoraLayer

    if scheme not in SCHEMES:
        raise ValueError(f"Unknown init scheme {scheme!r}: use 'init1' (B = 0) or 'init2' (A = 0).")
    done = 0
    for name, layer in unwrap(model).named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for key, a, b, embedding in _adapter_pairs(layer, adapter_name):
            if not force and bool(a.any()) and bool(b.any()):
                raise ValueError(
                    f"Adapter {key!r} of {name} has B·A != 0 (an init such as PiSSA, OLoRA or "
                    "LoftQ that moves part of the base weight into the adapter); "
                    "re-initializing it would change the model's output. Pass force=True only "
                    "if the base weight is untouched."
                )
            if scheme == "init1":
                b.zero_()
                if embedding:
                    a.normal_(0.0, 1.0, generator=generator)
                else:
                    _kaiming_uniform_(a, generator)
            else:
                a.zero_()
                _kaiming_uniform_(b, generator)
            done += 1
    if done == 0:
        raise ValueError(
            f"{type(unwrap(model)).__name__} has no trainable PEFT LoRA adapter"
            + (f" named {adapter_name!r}" if adapter_name else "")
            + " to initialize. Wrap it with peft.get_peft_model(model, LoraConfig(...)) first."
        )
    return done
