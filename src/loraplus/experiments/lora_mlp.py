"""A width-n LoRA MLP and its teacher, the test bed of ratio="auto" (tests and benchmarks).

Student: x -> W2·tanh(W1·x) with PEFT LoRA (r = 4, α = 4, Init[1]) on W1 and W2, both n × n and
frozen. Teacher: the same network with each weight shifted by a rank-2 matrix U·Vᵀ/√n (U, V
standard normal), which moves every output coordinate by Θ(1) at any width: the task is the same
size at every n, so only the width changes between runs. Inputs x ~ N(0, I_n), fresh each step,
MSE loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


def teacher_student(
    n: int, seed: int = 0
) -> tuple[PeftModel, Callable[[torch.Tensor], torch.Tensor]]:
    """The LoRA student of width n and its teacher function."""
    torch.manual_seed(seed)
    first, second = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
    base = nn.Sequential(first, nn.Tanh(), second)
    g = torch.Generator().manual_seed(seed + 1)
    w1, w2 = (
        layer.weight.detach()
        + torch.randn(n, 2, generator=g) @ torch.randn(2, n, generator=g) / math.sqrt(n)
        for layer in (first, second)
    )
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["0", "2"]))
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
