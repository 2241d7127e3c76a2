"""The toy grid's vectorized kernel: per-cell loss, hand-written gradients, per-cell GD/Adam."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Target:
    """What the vectorized loss compares f with: loss = mean_i (f_i - t_i)^2 + offset."""

    t: torch.Tensor
    offset: float


def make_target(y: torch.Tensor, loss: str) -> Target:
    """mse: t = y; broadcast: t = mean(y), offset = Var(y) (mean_ij (f_i-y_j)^2, expanded)."""
    if loss == "mse":
        return Target(y, 0.0)
    return Target(torch.full_like(y, float(y.mean())), float(y.var(unbiased=False)))


def loss_and_grads(
    a: torch.Tensor,
    b: torch.Tensor,
    z_t: torch.Tensor,
    target: Target,
    w_out: torch.Tensor,
    g0: float,
    need_grad: bool,
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-cell loss and its gradients for a batch of cells: a (C,r,n), b (C,n,r), z_t (n,N).

    With mask = ReLU'(h) (value g0 at 0) and g = dL/df, dL/dh = g·mask·w_out is never
    materialized: grad_B = w_out ⊙ (maskᵀ (g·u)) and dL/du = g·(mask (w_out ⊙ B)). `buffers`
    are reused (C_max,N,n) tensors for h and mask (fresh big allocations page-fault every step).
    """
    c = a.shape[0]
    u = torch.matmul(a, z_t).transpose(1, 2)  # (C,N,r): one GEMM over all cells
    if buffers is None:
        h = torch.bmm(u, b.transpose(1, 2))  # (C,N,n)
        mask = torch.empty_like(h) if need_grad else None
    else:
        h = torch.bmm(u, b.transpose(1, 2), out=buffers[0][:c])
        mask = buffers[1][:c] if need_grad else None
    if mask is not None:
        if g0 == 0.5:  # heaviside(h, 1/2) = (sign(h) + 1) / 2, the fastest exact form
            torch.sign(h, out=mask).add_(1.0).mul_(0.5)
        else:
            torch.gt(h, 0, out=mask)
            if g0 != 0.0:
                zero = h == 0
                if bool(zero.any()):
                    mask.add_(zero.to(h.dtype), alpha=g0)
    e = torch.matmul(h.relu_(), w_out) - target.t  # (C,N)
    loss = e.pow(2).mean(1) + target.offset
    if mask is None:
        return loss, None, None
    g = e.mul_(2.0 / e.shape[1]).unsqueeze(-1)  # dL/df (C,N,1)
    w_col = w_out.unsqueeze(-1)
    grad_b = torch.bmm((g * u).transpose(1, 2), mask).transpose(1, 2).mul(w_col)  # (C,n,r)
    du = torch.bmm(mask, b * w_col).mul_(g)  # dL/du (C,N,r)
    grad_a = torch.matmul(du.transpose(1, 2), z_t.t())  # (C,r,n)
    return loss, grad_a, grad_b


class CellOptimizer:
    """GD or Adam (torch.optim.Adam's formula) with one lr per cell, on rows of the cell state."""

    def __init__(
        self,
        optimizer: str,
        betas: Sequence[float],
        eps: float,
        shapes: Sequence[torch.Size],
        dtype: torch.dtype,
    ):
        self.optimizer, self.betas, self.eps = optimizer, (betas[0], betas[1]), eps
        self.t = 0
        adam = optimizer == "adam"
        self.m = [torch.zeros(s, dtype=dtype) for s in shapes] if adam else []
        self.v = [torch.zeros(s, dtype=dtype) for s in shapes] if adam else []

    def step(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        lrs: Sequence[torch.Tensor],
        idx: torch.Tensor,
    ) -> None:
        """Update rows `idx` of each full-grid tensor in `params`; grads are for those rows."""
        if self.optimizer == "gd":
            for p, gr, lr in zip(params, grads, lrs, strict=True):
                p[idx] = p[idx] - lr.view(-1, 1, 1) * gr
            return
        b1, b2 = self.betas
        k = self.t + 1
        bc1, bc2 = 1 - b1**k, 1 - b2**k
        for p, gr, lr, m, v in zip(params, grads, lrs, self.m, self.v, strict=True):
            mi = m[idx].lerp_(gr, 1 - b1)
            vi = v[idx].mul_(b2).addcmul_(gr, gr, value=1 - b2)
            m[idx], v[idx] = mi, vi
            denom = (vi.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p[idx] = p[idx] - (lr.view(-1, 1, 1) / bc1) * mi / denom

    def tick(self) -> None:
        """Advance the shared step counter (Adam's bias correction) after a full step."""
        self.t += 1
