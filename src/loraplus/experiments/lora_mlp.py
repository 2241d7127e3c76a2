"""A width-n LoRA MLP and its teacher, the test bed of ratio="auto" (tests and benchmarks).

Student: x -> W2·tanh(W1·x) with PEFT LoRA (r = 4, α = 4, Init[1]) on W1 and W2, both n × n and
frozen. Teacher: the same network with each weight shifted by a rank-2 matrix U·Vᵀ/√n (U, V
standard normal), which moves every output coordinate by Θ(1) at any width: the task is the same
size at every n, so only the width changes between runs. Inputs x ~ N(0, I_n), fresh each step,
MSE loss.

`lora_config(**changes)` is the student's LoraConfig with fields changed (rsLoRA, PiSSA, ...); the
teacher is always built from the original base weights, before PEFT touches them (PiSSA moves the
top singular directions out of the base), so every variant learns the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


def lora_config(**changes: Any) -> LoraConfig:
    """The student's adapter: r = 4, α = 4 on both layers, with `changes` to LoraConfig's fields."""
    return LoraConfig(**{"r": 4, "lora_alpha": 4, "target_modules": ["0", "2"], **changes})


def teacher_student(
    n: int, seed: int = 0, config: LoraConfig | None = None
) -> tuple[PeftModel, Callable[[torch.Tensor], torch.Tensor]]:
    """The LoRA student of width n (adapter `config`, default lora_config()) and its teacher."""
    torch.manual_seed(seed)
    first, second = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
    base = nn.Sequential(first, nn.Tanh(), second)
    g = torch.Generator().manual_seed(seed + 1)
    w1, w2 = (
        layer.weight.detach()
        + torch.randn(n, 2, generator=g) @ torch.randn(2, n, generator=g) / math.sqrt(n)
        for layer in (first, second)
    )
    model = get_peft_model(base, config if config is not None else lora_config())
    return model, lambda x: torch.tanh(x @ w1.T) @ w2.T


def batches(n: int, batch: int = 64, seed: int = 7) -> Iterator[torch.Tensor]:
    """Endless batches of x ~ N(0, I_n)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(batch, n, generator=g)


def train(
    model: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    data: Iterator[torch.Tensor],
    steps: int,
) -> float:
    """`steps` MSE steps on fresh batches; the last batch's loss."""
    loss = torch.zeros(())
    for _ in range(steps):
        x = next(data)
        loss = (model(x) - teacher(x)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(loss.detach())


@torch.no_grad()
def mse(
    model: nn.Module, teacher: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> float:
    """The student's mean squared error against the teacher on inputs x (no gradient)."""
    return float((model(x) - teacher(x)).pow(2).mean())
