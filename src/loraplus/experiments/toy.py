"""The paper's toy experiment (§3.2, Figure 2): a LoRA MLP trained over an (lr_A, lr_B) grid.

Model: f(x) = W_out · ReLU(B · A · ReLU(W_in · x)), W_in ∈ R^{n×d} and W_out ∈ R^{1×n} fixed at
init, only A (r×n) and B (n×r) trained, full batch. Data: x ~ N(0, I_d), y = sin(mean(x)).
Set-ups (`setup`), all with W_out ~ N(0, 1/n) (readout="standard") or N(0, 1/n²) ("mup"):

- "paper": appendix C.1.1 of the ICML 2024 paper: W_in ~ N(0, 1), A ~ N(0, 1/n), B ~ N(0, 1).
  Both A and B start non-zero, so B·A ≠ 0 at init (neither Init[1] nor Init[2]).
- "init1": the project's earlier reconstruction: W_in ~ N(0, 1/d), B = 0, A ~ N(0, 1/n).
- "init2": W_in ~ N(0, 1/d), A = 0, B ~ N(0, 1/r).

Losses (`loss`): "mse" is mean_i (f(x_i) − y_i)², the paper's stated loss; "broadcast" is
mean_{i,j} (f(x_i) − y_j)², what an (N,1) − (N,) shape slip computes. It equals
mean_i (f_i − ȳ)² + Var(y) ≥ Var(y); it is a hypothesis about the figure's ≈ 0.17 loss level,
not the paper's stated loss.

Under init1/init2 B·A = 0 at init, so ReLU'(0) decides whether anything moves: both trainers use
ReLU'(0) := `relu_grad_at_zero` (default 1/2, the tie rule of jnp.maximum).

`run_toy` trains every grid cell at once for each seed: the state is a (cells, r, n) and a
(cells, n, r) tensor, one batched matmul per step for all cells, hand-written gradients; the loss
grids are then averaged over seeds (the paper's way) before the best cell is taken.
`train_single` is a plain autograd + torch.optim loop for one (lr_A, lr_B) and one seed, which
the tests use to check the grid. A cell whose train loss turns non-finite or exceeds `blowup` ×
the initial loss is frozen and recorded as diverged (loss = inf from that step on), never dropped.
The config and result records live in toy_result.py, toy.json and the heatmaps in toy_io.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from loraplus.experiments._toygrid import CellOptimizer, loss_and_grads, make_target
from loraplus.experiments.toy_result import (
    LOSS_KEYS,
    STAGES,
    LossKind,
    ToyConfig,
    ToyResult,
)


@dataclass(frozen=True)
class ToyProblem:
    """Data and initial weights of one toy run, shared by the grid and the single-cell trainer."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    w_in: torch.Tensor
    w_out: torch.Tensor
    a0: torch.Tensor
    b0: torch.Tensor


def make_problem(cfg: ToyConfig, seed: int | None = None) -> ToyProblem:
    """Draw data and init from `seed` (default: the first of cfg.seeds), float64 then cast."""
    g = torch.Generator().manual_seed(cfg.seeds[0] if seed is None else seed)
    f64 = torch.float64

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=f64)

    x_train, x_test = randn(cfg.n_train, cfg.d), randn(cfg.n_test, cfg.d)
    w_in = randn(cfg.n, cfg.d)  # every draw is made in every set-up: the RNG stream is shared
    w_out = randn(cfg.n) / (cfg.n if cfg.readout == "mup" else math.sqrt(cfg.n))
    a_rand = randn(cfg.r, cfg.n) / math.sqrt(cfg.n)
    b_rand = randn(cfg.n, cfg.r)
    if cfg.setup == "paper":
        a0, b0 = a_rand, b_rand
    else:
        w_in = w_in / math.sqrt(cfg.d)
        if cfg.setup == "init1":
            a0, b0 = a_rand, torch.zeros_like(b_rand)
        else:
            a0, b0 = torch.zeros_like(a_rand), b_rand / math.sqrt(cfg.r)
    dt = _dtype(cfg)
    return ToyProblem(
        x_train=x_train.to(dt),
        y_train=torch.sin(x_train.mean(1)).to(dt),
        x_test=x_test.to(dt),
        y_test=torch.sin(x_test.mean(1)).to(dt),
        w_in=w_in.to(dt),
        w_out=w_out.to(dt),
        a0=a0.to(dt),
        b0=b0.to(dt),
    )


def _dtype(cfg: ToyConfig) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def toy_loss(f: torch.Tensor, y: torch.Tensor, loss: LossKind = "mse") -> torch.Tensor:
    """The loss by its definition: mse = mean_i (f_i - y_i)^2, broadcast = mean_ij (f_i - y_j)^2."""
    if loss == "mse":
        return (f - y).pow(2).mean()
    if loss == "broadcast":
        return (f.reshape(-1, 1) - y.reshape(1, -1)).pow(2).mean()  # the (N,1) - (N,) slip
    raise ValueError(f"loss={loss!r}: use 'mse' or 'broadcast'.")


@dataclass
class _SeedGrid:
    """One seed's flat (cells,) records: losses per stage/split, first blow-up step, init loss."""

    losses: dict[str, np.ndarray]
    div_step: np.ndarray
    init_loss: float


def _run_seed(cfg: ToyConfig, seed: int, bar: Any) -> _SeedGrid:
    """Train every cell of the grid for one seed (cell c = i * len(lr_b) + j)."""
    dt = _dtype(cfg)
    p = make_problem(cfg, seed)
    z_tr_t = torch.relu(p.x_train @ p.w_in.t()).t().contiguous()  # (n, N)
    z_te_t = torch.relu(p.x_test @ p.w_in.t()).t().contiguous()
    tgt_tr, tgt_te = make_target(p.y_train, cfg.loss), make_target(p.y_test, cfg.loss)
    ga, gb = len(cfg.lrs_a), len(cfg.lrs_b)
    cells = ga * gb
    lr_a = torch.tensor(cfg.lrs_a, dtype=dt).repeat_interleave(gb)
    lr_b = torch.tensor(cfg.lrs_b, dtype=dt).repeat(ga)
    a_all = p.a0.expand(cells, -1, -1).clone()
    b_all = p.b0.expand(cells, -1, -1).clone()
    opt = CellOptimizer(cfg.optimizer, cfg.adam_betas, cfg.adam_eps, [a_all.shape, b_all.shape], dt)
    g0 = cfg.relu_grad_at_zero
    init_loss = float(
        loss_and_grads(p.a0[None], p.b0[None], z_tr_t, tgt_tr, p.w_out, g0, False)[0][0]
    )
    threshold = cfg.blowup * init_loss
    per_cell = 2 * cfg.n_train * cfg.n * torch.finfo(dt).bits // 8
    chunk = max(1, min(cells, int(cfg.chunk_mb * 2**20 // per_cell)))
    buffers = (
        torch.empty(chunk, cfg.n_train, cfg.n, dtype=dt),
        torch.empty(chunk, cfg.n_train, cfg.n, dtype=dt),
    )
    active = torch.ones(cells, dtype=torch.bool)
    div_step = np.full(cells, -1, dtype=np.int64)
    rec = {key: np.full(cells, np.inf) for key in LOSS_KEYS}
    for t in range(cfg.steps + 1):
        bar.update(1)
        idx_all = active.nonzero().squeeze(1)
        if idx_all.numel() == 0:
            continue
        stages = [st for st in STAGES if t == (cfg.early_step if st == "early" else cfg.steps)]
        train_last = t == cfg.steps
        for idx in idx_all.split(chunk):
            a, b = a_all[idx], b_all[idx]
            loss, grad_a, grad_b = loss_and_grads(
                a, b, z_tr_t, tgt_tr, p.w_out, g0, not train_last, buffers
            )
            bad = ~torch.isfinite(loss) | (loss > threshold)
            if bool(bad.any()):
                active[idx[bad]] = False
                div_step[idx[bad].numpy()] = t
            ok = ~bad
            idx_ok = idx[ok]
            if stages and idx_ok.numel():
                loss_te = loss_and_grads(a[ok], b[ok], z_te_t, tgt_te, p.w_out, g0, False)[0]
                cols = idx_ok.numpy()
                for st in stages:
                    rec[f"train_{st}"][cols] = loss[ok].double().numpy()
                    rec[f"test_{st}"][cols] = loss_te.double().numpy()
            if not train_last and idx_ok.numel():
                assert grad_a is not None and grad_b is not None
                opt.step(
                    [a_all, b_all], [grad_a[ok], grad_b[ok]], [lr_a[idx_ok], lr_b[idx_ok]], idx_ok
                )
        opt.tick()
        bar.set_postfix(seed=seed, active=int(active.sum()))
    return _SeedGrid(losses=rec, div_step=div_step, init_loss=init_loss)


def _aggregate(cfg: ToyConfig, grids: list[_SeedGrid], seconds: float) -> ToyResult:
    """Average the seeds' grids (inf stays inf: a cell diverged in any seed is not-best)."""
    shape = (len(cfg.lrs_a), len(cfg.lrs_b))
    stacked = {k: np.stack([g.losses[k].reshape(shape) for g in grids]) for k in LOSS_KEYS}
    div = np.stack([g.div_step.reshape(shape) for g in grids])
    first = np.where(div >= 0, div, np.iinfo(np.int64).max).min(axis=0)
    any_div = np.asarray((div >= 0).any(axis=0), dtype=bool)
    return ToyResult(
        config=cfg,
        lr_a=np.asarray(cfg.lrs_a, dtype=np.float64),
        lr_b=np.asarray(cfg.lrs_b, dtype=np.float64),
        **{k: v.mean(axis=0) for k, v in stacked.items()},
        diverged=any_div,
        diverged_step=np.where(any_div, first, -1),
        init_loss=float(np.mean([g.init_loss for g in grids])),
        seconds=seconds,
        seed_losses=stacked,
        seed_diverged_step=div,
        seed_init_loss=[g.init_loss for g in grids],
    )


def run_toy(cfg: ToyConfig) -> ToyResult:
    """Train every (lr_A, lr_B) cell for every seed; losses at `early_step` and `steps`."""
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    total = len(cfg.seeds) * (cfg.steps + 1)
    desc = f"toy {cfg.setup} {cfg.loss} n={cfg.n} {cfg.optimizer}"
    with tqdm(total=total, disable=not cfg.progress, desc=desc, leave=False) as bar:
        try:
            grids = [_run_seed(cfg, seed, bar) for seed in cfg.seeds]
        finally:
            torch.set_num_threads(threads)
    return _aggregate(cfg, grids, time.perf_counter() - t_start)


@dataclass
class SingleRun:
    """One (lr_A, lr_B) trained directly; losses are inf from the step it diverged on."""

    lr_a: float
    lr_b: float
    train_losses: list[float] = field(default_factory=list)  # at steps 0..steps
    train_early: float = math.inf
    test_early: float = math.inf
    train_final: float = math.inf
    test_final: float = math.inf
    diverged_step: int = -1

    @property
    def diverged(self) -> bool:
        """True if the train loss blew up at some step."""
        return self.diverged_step >= 0


def _relu_g0(h: torch.Tensor, g0: float) -> torch.Tensor:
    """ReLU whose autograd derivative at exactly 0 is g0 (torch's own is 0)."""
    zero = (h == 0).to(h.dtype)
    return torch.relu(h) + g0 * zero * (h - h.detach())


def train_single(cfg: ToyConfig, lr_a: float, lr_b: float, seed: int | None = None) -> SingleRun:
    """Plain autograd + torch.optim loop for one cell and one seed: `run_toy`'s reference."""
    p = make_problem(cfg, seed)
    a = p.a0.clone().requires_grad_(True)
    b = p.b0.clone().requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": [a], "lr": lr_a}, {"params": [b], "lr": lr_b}]
    opt: torch.optim.Optimizer
    if cfg.optimizer == "gd":
        opt = torch.optim.SGD(groups, lr=lr_a)
    else:
        betas = (cfg.adam_betas[0], cfg.adam_betas[1])
        opt = torch.optim.Adam(groups, lr=lr_a, betas=betas, eps=cfg.adam_eps)
    g0 = cfg.relu_grad_at_zero

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.relu(x @ p.w_in.t())
        return toy_loss(_relu_g0(z @ a.t() @ b.t(), g0) @ p.w_out, y, cfg.loss)

    run = SingleRun(lr_a=lr_a, lr_b=lr_b)
    with torch.no_grad():
        threshold = cfg.blowup * float(objective(p.x_train, p.y_train))
    for t in range(cfg.steps + 1):
        opt.zero_grad()
        loss = objective(p.x_train, p.y_train)
        value = float(loss.detach())
        if not math.isfinite(value) or value > threshold:
            run.diverged_step = t
            break
        run.train_losses.append(value)
        with torch.no_grad():
            test = float(objective(p.x_test, p.y_test))
        if t == cfg.early_step:
            run.train_early, run.test_early = value, test
        if t == cfg.steps:
            run.train_final, run.test_final = value, test
            break
        loss.backward()
        opt.step()
    return run
