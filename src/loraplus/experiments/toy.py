"""The paper's toy experiment (§3.2, Figure 2): a LoRA MLP trained over an (lr_A, lr_B) grid.

Model: f(x) = W_out · ReLU(B · A · ReLU(W_in · x)), W_in ∈ R^{n×d} and W_out ∈ R^{1×n} fixed at
init, only A (r×n) and B (n×r) trained on the MSE loss, full batch. Data: x ~ N(0, I_d),
y = sin(mean(x)). Standard (fan-in) parametrization, no width multipliers, so every activation is
Θ(1) in the width n:

- W_in ~ N(0, 1/d): W_in·x and z = ReLU(W_in·x) have Θ(1) entries;
- Init[1] ("init1"): B = 0, A ~ N(0, 1/n), so A·z has Θ(1) entries (CLT over n);
- Init[2] ("init2"): A = 0, B ~ N(0, 1/r), so B·u has Θ(1) entries for u ∈ R^r of Θ(1) entries;
- readout="standard": W_out ~ N(0, 1/n), so W_out·h is Θ(1) for h of Θ(1) entries;
  readout="mup": W_out ~ N(0, 1/n²), the μP readout of the μP-pretrained model of Theorem 1.

B·A = 0 at init, so h = 0 and ReLU'(0) decides whether anything moves: torch's ReLU'(0) = 0 would
make the init a stationary point. Both trainers use ReLU'(0) := `relu_grad_at_zero` (default 1/2,
the tie rule of jnp.maximum).

`run_toy` trains every grid cell at once: the state is a (cells, r, n) and a (cells, n, r) tensor,
one batched matmul per step for all cells, with hand-written gradients; `train_single` is a plain
autograd + torch.optim loop for one (lr_A, lr_B), which the tests use to check the grid. A cell
whose train loss turns non-finite or exceeds `blowup` × the initial loss is frozen and recorded as
diverged (loss = inf from that step on), never dropped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from loraplus._io import write_json

Init = Literal["init1", "init2"]
Optimizer = Literal["gd", "adam"]
Readout = Literal["standard", "mup"]
Stage = Literal["early", "final"]
Split = Literal["train", "test"]

STAGES: tuple[Stage, ...] = ("early", "final")
SPLITS: tuple[Split, ...] = ("train", "test")


def log2_grid(lo: float, hi: float, num: int) -> tuple[float, ...]:
    """`num` learning rates from 2**lo to 2**hi, evenly spaced in log2."""
    if num < 1 or hi < lo:
        raise ValueError(f"log2_grid needs num >= 1 and hi >= lo, got ({lo}, {hi}, {num}).")
    if num == 1:
        return (float(2.0**lo),)
    return tuple(float(2.0 ** (lo + (hi - lo) * k / (num - 1))) for k in range(num))


DEFAULT_LRS: tuple[float, ...] = log2_grid(-10, 4, 15)


@dataclass(frozen=True)
class ToyConfig:
    """Everything that defines one toy grid run (defaults: SPEC "Toy experiment")."""

    n: int = 100
    d: int = 5
    r: int = 4
    n_train: int = 1000
    n_test: int = 100
    init: Init = "init1"
    optimizer: Optimizer = "gd"
    readout: Readout = "standard"
    lr_a: tuple[float, ...] = DEFAULT_LRS
    lr_b: tuple[float, ...] = DEFAULT_LRS
    steps: int = 200
    early_step: int = 10
    seed: int = 0
    relu_grad_at_zero: float = 0.5
    blowup: float = 1e3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    dtype: Literal["float32", "float64"] = "float32"
    chunk_mb: float = 64.0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("n", "d", "r", "n_train", "n_test", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"ToyConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.early_step <= self.steps:
            raise ValueError(
                f"ToyConfig.early_step={self.early_step} must lie in [0, steps={self.steps}]."
            )
        if self.init not in ("init1", "init2"):
            raise ValueError(f"ToyConfig.init={self.init!r}: use 'init1' (B = 0) or 'init2'.")
        if self.optimizer not in ("gd", "adam"):
            raise ValueError(f"ToyConfig.optimizer={self.optimizer!r}: use 'gd' or 'adam'.")
        if self.readout not in ("standard", "mup"):
            raise ValueError(f"ToyConfig.readout={self.readout!r}: use 'standard' or 'mup'.")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"ToyConfig.dtype={self.dtype!r}: use 'float32' or 'float64'.")
        if not self.lr_a or not self.lr_b or min(*self.lr_a, *self.lr_b) <= 0:
            raise ValueError("ToyConfig.lr_a and lr_b must be non-empty tuples of positive lrs.")
        if self.blowup <= 1:
            raise ValueError(f"ToyConfig.blowup={self.blowup} must be > 1 (x initial loss).")


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


def make_problem(cfg: ToyConfig) -> ToyProblem:
    """Draw data and init from `cfg.seed` (float64 draws, cast to `cfg.dtype`)."""
    g = torch.Generator().manual_seed(cfg.seed)
    f64 = torch.float64

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=f64)

    x_train, x_test = randn(cfg.n_train, cfg.d), randn(cfg.n_test, cfg.d)
    w_in = randn(cfg.n, cfg.d) / math.sqrt(cfg.d)
    w_out = randn(cfg.n) / (cfg.n if cfg.readout == "mup" else math.sqrt(cfg.n))
    a_rand = randn(cfg.r, cfg.n) / math.sqrt(cfg.n)  # both drawn always: init does not shift RNG
    b_rand = randn(cfg.n, cfg.r) / math.sqrt(cfg.r)
    if cfg.init == "init1":
        a0, b0 = a_rand, torch.zeros_like(b_rand)
    else:
        a0, b0 = torch.zeros_like(a_rand), b_rand
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


@dataclass
class ToyResult:
    """Losses of every grid cell; arrays are (len(lr_a), len(lr_b)), inf where diverged."""

    config: ToyConfig
    lr_a: np.ndarray
    lr_b: np.ndarray
    train_early: np.ndarray
    test_early: np.ndarray
    train_final: np.ndarray
    test_final: np.ndarray
    diverged: np.ndarray  # bool: diverged at or before the final step
    diverged_step: np.ndarray  # int: first step whose loss blew up, -1 if never
    init_loss: float
    seconds: float = 0.0

    def loss(self, stage: Stage = "final", split: Split = "train") -> np.ndarray:
        """The (len(lr_a), len(lr_b)) loss array of one split at one stage."""
        if stage not in STAGES or split not in SPLITS:
            raise ValueError(f"Use stage in {STAGES} and split in {SPLITS}, got {stage}, {split}.")
        arr: np.ndarray = getattr(self, f"{split}_{stage}")
        return arr

    def step_of(self, stage: Stage) -> int:
        """The training step at which `stage` was recorded."""
        return self.config.early_step if stage == "early" else self.config.steps


def _loss_and_grads(
    a: torch.Tensor,
    b: torch.Tensor,
    z_t: torch.Tensor,
    y: torch.Tensor,
    w_out: torch.Tensor,
    g0: float,
    need_grad: bool,
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-cell MSE and its gradients for a batch of cells: a (C,r,n), b (C,n,r), z_t (n,N).

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
    e = torch.matmul(h.relu_(), w_out) - y  # (C,N)
    loss = e.pow(2).mean(1)
    if mask is None:
        return loss, None, None
    g = e.mul_(2.0 / e.shape[1]).unsqueeze(-1)  # dL/df (C,N,1)
    w_col = w_out.unsqueeze(-1)
    grad_b = torch.bmm((g * u).transpose(1, 2), mask).transpose(1, 2).mul(w_col)  # (C,n,r)
    du = torch.bmm(mask, b * w_col).mul_(g)  # dL/du (C,N,r)
    grad_a = torch.matmul(du.transpose(1, 2), z_t.t())  # (C,r,n)
    return loss, grad_a, grad_b


class _CellOptimizer:
    """GD or Adam (torch.optim.Adam's formula) with one lr per cell, on rows of the cell state."""

    def __init__(self, cfg: ToyConfig, shapes: Sequence[torch.Size], dtype: torch.dtype):
        self.cfg = cfg
        self.t = 0
        self.m = [torch.zeros(s, dtype=dtype) for s in shapes] if cfg.optimizer == "adam" else []
        self.v = [torch.zeros(s, dtype=dtype) for s in shapes] if cfg.optimizer == "adam" else []

    def step(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        lrs: Sequence[torch.Tensor],
        idx: torch.Tensor,
    ) -> None:
        """Update rows `idx` of each full-grid tensor in `params`; grads are for those rows."""
        if self.cfg.optimizer == "gd":
            for p, gr, lr in zip(params, grads, lrs, strict=True):
                p[idx] = p[idx] - lr.view(-1, 1, 1) * gr
            return
        b1, b2 = self.cfg.adam_betas
        k = self.t + 1
        bc1, bc2 = 1 - b1**k, 1 - b2**k
        for p, gr, lr, m, v in zip(params, grads, lrs, self.m, self.v, strict=True):
            mi = m[idx].lerp_(gr, 1 - b1)
            vi = v[idx].mul_(b2).addcmul_(gr, gr, value=1 - b2)
            m[idx], v[idx] = mi, vi
            denom = (vi.sqrt() / math.sqrt(bc2)).add_(self.cfg.adam_eps)
            p[idx] = p[idx] - (lr.view(-1, 1, 1) / bc1) * mi / denom

    def tick(self) -> None:
        """Advance the shared step counter (Adam's bias correction) after a full step."""
        self.t += 1


def run_toy(cfg: ToyConfig) -> ToyResult:
    """Train every (lr_A, lr_B) cell of the grid at once; losses at `early_step` and `steps`."""
    t_start = time.perf_counter()
    dt = _dtype(cfg)
    p = make_problem(cfg)
    z_tr_t = torch.relu(p.x_train @ p.w_in.t()).t().contiguous()  # (n, N)
    z_te_t = torch.relu(p.x_test @ p.w_in.t()).t().contiguous()
    ga, gb = len(cfg.lr_a), len(cfg.lr_b)
    cells = ga * gb  # cell c = i * len(lr_b) + j
    lr_a = torch.tensor(cfg.lr_a, dtype=dt).repeat_interleave(gb)
    lr_b = torch.tensor(cfg.lr_b, dtype=dt).repeat(ga)
    a_all = p.a0.expand(cells, -1, -1).clone()
    b_all = p.b0.expand(cells, -1, -1).clone()
    opt = _CellOptimizer(cfg, [a_all.shape, b_all.shape], dt)
    g0 = cfg.relu_grad_at_zero
    init_loss = float(
        _loss_and_grads(p.a0[None], p.b0[None], z_tr_t, p.y_train, p.w_out, g0, False)[0][0]
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
    rec = {(st, sp): np.full(cells, np.inf) for st in STAGES for sp in SPLITS}

    bar = tqdm(
        range(cfg.steps + 1),
        disable=not cfg.progress,
        desc=f"toy n={cfg.n} {cfg.optimizer}",
        leave=False,
    )
    for t in bar:
        idx_all = active.nonzero().squeeze(1)
        if idx_all.numel() == 0:
            break
        stages = [st for st in STAGES if t == (cfg.early_step if st == "early" else cfg.steps)]
        train_last = t == cfg.steps
        for idx in idx_all.split(chunk):
            a, b = a_all[idx], b_all[idx]
            loss, grad_a, grad_b = _loss_and_grads(
                a, b, z_tr_t, p.y_train, p.w_out, g0, not train_last, buffers
            )
            bad = ~torch.isfinite(loss) | (loss > threshold)
            if bool(bad.any()):
                active[idx[bad]] = False
                div_step[idx[bad].numpy()] = t
            ok = ~bad
            idx_ok = idx[ok]
            if stages and idx_ok.numel():
                loss_te = _loss_and_grads(a[ok], b[ok], z_te_t, p.y_test, p.w_out, g0, False)[0]
                cols = idx_ok.numpy()
                for st in stages:
                    rec[(st, "train")][cols] = loss[ok].double().numpy()
                    rec[(st, "test")][cols] = loss_te.double().numpy()
            if not train_last and idx_ok.numel():
                assert grad_a is not None and grad_b is not None
                opt.step(
                    [a_all, b_all],
                    [grad_a[ok], grad_b[ok]],
                    [lr_a[idx_ok], lr_b[idx_ok]],
                    idx_ok,
                )
        opt.tick()
        if cfg.progress:
            bar.set_postfix(active=int(active.sum()))
    bar.close()

    shape = (ga, gb)
    return ToyResult(
        config=cfg,
        lr_a=np.asarray(cfg.lr_a, dtype=np.float64),
        lr_b=np.asarray(cfg.lr_b, dtype=np.float64),
        train_early=rec[("early", "train")].reshape(shape),
        test_early=rec[("early", "test")].reshape(shape),
        train_final=rec[("final", "train")].reshape(shape),
        test_final=rec[("final", "test")].reshape(shape),
        diverged=(div_step >= 0).reshape(shape),
        diverged_step=div_step.reshape(shape),
        init_loss=init_loss,
        seconds=time.perf_counter() - t_start,
    )


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


def train_single(cfg: ToyConfig, lr_a: float, lr_b: float) -> SingleRun:
    """Plain autograd + torch.optim loop for one cell: the reference `run_toy` is tested against."""
    p = make_problem(cfg)
    a = p.a0.clone().requires_grad_(True)
    b = p.b0.clone().requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": [a], "lr": lr_a}, {"params": [b], "lr": lr_b}]
    opt: torch.optim.Optimizer
    if cfg.optimizer == "gd":
        opt = torch.optim.SGD(groups, lr=lr_a)
    else:
        opt = torch.optim.Adam(groups, lr=lr_a, betas=cfg.adam_betas, eps=cfg.adam_eps)
    g0 = cfg.relu_grad_at_zero

    def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.relu(x @ p.w_in.t())
        f = _relu_g0(z @ a.t() @ b.t(), g0) @ p.w_out
        return (f - y).pow(2).mean()

    run = SingleRun(lr_a=lr_a, lr_b=lr_b)
    with torch.no_grad():
        threshold = cfg.blowup * float(mse(p.x_train, p.y_train))
    for t in range(cfg.steps + 1):
        opt.zero_grad()
        loss = mse(p.x_train, p.y_train)
        value = float(loss.detach())
        if not math.isfinite(value) or value > threshold:
            run.diverged_step = t
            break
        run.train_losses.append(value)
        with torch.no_grad():
            test = float(mse(p.x_test, p.y_test))
        if t == cfg.early_step:
            run.train_early, run.test_early = value, test
        if t == cfg.steps:
            run.train_final, run.test_final = value, test
            break
        loss.backward()
        opt.step()
    return run


@dataclass(frozen=True)
class BestPoint:
    """The grid's argmin of one loss, and the best cell on the diagonal lr_A = lr_B."""

    stage: Stage
    split: Split
    i: int
    j: int
    lr_a: float
    lr_b: float
    loss: float
    diag_lr: float | None
    diag_loss: float | None

    @property
    def ratio(self) -> float:
        """lr_B / lr_A at the best cell."""
        return self.lr_b / self.lr_a


def best(result: ToyResult, stage: Stage = "final", split: Split = "train") -> BestPoint:
    """Argmin cell of `split` loss at `stage` (diverged cells are inf), and the diagonal's best."""
    loss = result.loss(stage, split)
    if not np.isfinite(loss).any():
        raise ValueError(
            f"Every cell diverged by the {stage} step; extend the lr grid toward smaller values."
        )
    i, j = (int(k) for k in np.unravel_index(int(np.argmin(loss)), loss.shape))
    diag = [
        (float(loss[ia, jb]), float(la))
        for ia, la in enumerate(result.lr_a)
        for jb, lb in enumerate(result.lr_b)
        if math.isclose(la, lb, rel_tol=1e-9)
    ]
    diag_loss, diag_lr = min(diag) if diag else (None, None)
    if diag_loss is not None and not math.isfinite(diag_loss):
        diag_lr = None
    return BestPoint(
        stage=stage,
        split=split,
        i=i,
        j=j,
        lr_a=float(result.lr_a[i]),
        lr_b=float(result.lr_b[j]),
        loss=float(loss[i, j]),
        diag_lr=diag_lr,
        diag_loss=diag_loss,
    )


def format_best(point: BestPoint) -> str:
    """`best lr_A=<x> lr_B=<y> ratio=<y/x> loss=<l>; best on diagonal lr=<z> loss=<m>`."""
    z = "n/a" if point.diag_lr is None else f"{point.diag_lr:.4g}"
    m = "n/a" if point.diag_loss is None else f"{point.diag_loss:.4g}"
    return (
        f"best lr_A={point.lr_a:.4g} lr_B={point.lr_b:.4g} ratio={point.ratio:.4g} "
        f"loss={point.loss:.4g}; best on diagonal lr={z} loss={m}"
    )


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def toy_to_json(result: ToyResult, margin: float = 0.01) -> dict[str, Any]:
    """Plain-JSON form: config, grid, every cell (null = diverged), best points, near-best cells."""
    cells = []
    for i, la in enumerate(result.lr_a):
        for j, lb in enumerate(result.lr_b):
            cell: dict[str, Any] = {"i": i, "j": j, "lr_a": float(la), "lr_b": float(lb)}
            for st in STAGES:
                for sp in SPLITS:
                    cell[f"{sp}_{st}"] = _json_float(result.loss(st, sp)[i, j])
            cell["diverged"] = bool(result.diverged[i, j])
            cell["diverged_step"] = int(result.diverged_step[i, j])
            cells.append(cell)
    best_points: dict[str, dict[str, Any] | None] = {}
    for st in STAGES:
        for sp in SPLITS:
            key = f"{sp}_{st}"
            try:
                bp = best(result, st, sp)
            except ValueError:
                best_points[key] = None
                continue
            near = np.argwhere(result.loss(st, sp) <= bp.loss * (1 + margin)).tolist()
            best_points[key] = {
                **{k: v for k, v in asdict(bp).items() if k not in ("stage", "split")},
                "ratio": bp.ratio,
                "step": result.step_of(st),
                "line": format_best(bp),
                "near_best": near,
            }
    cfg = asdict(result.config)
    return {
        "experiment": "toy",
        "config": cfg,
        "lr_a": result.lr_a.tolist(),
        "lr_b": result.lr_b.tolist(),
        "init_loss": result.init_loss,
        "seconds": result.seconds,
        "near_best_margin": margin,
        "best": best_points,
        "cells": cells,
    }


def read_toy_json(path: str | Path) -> ToyResult:
    """Rebuild a ToyResult from `toy.json` (null losses read back as inf)."""
    data = json.loads(Path(path).read_text())
    raw = data["config"]
    kwargs = {f.name: raw[f.name] for f in fields(ToyConfig) if f.name in raw}
    for key in ("lr_a", "lr_b", "adam_betas"):
        kwargs[key] = tuple(kwargs[key])
    cfg = ToyConfig(**kwargs)
    lr_a, lr_b = np.asarray(data["lr_a"], float), np.asarray(data["lr_b"], float)
    shape = (lr_a.size, lr_b.size)
    arrays = {f"{sp}_{st}": np.full(shape, np.inf) for st in STAGES for sp in SPLITS}
    div_step = np.full(shape, -1, dtype=np.int64)
    for c in data["cells"]:
        for key, arr in arrays.items():
            arr[c["i"], c["j"]] = np.inf if c[key] is None else c[key]
        div_step[c["i"], c["j"]] = c["diverged_step"]
    return ToyResult(
        config=cfg,
        lr_a=lr_a,
        lr_b=lr_b,
        diverged=div_step >= 0,
        diverged_step=div_step,
        init_loss=float(data["init_loss"]),
        seconds=float(data["seconds"]),
        **arrays,
    )


def write_toy_outputs(
    result: ToyResult, out_dir: str | Path, *, margin: float = 0.01, prefix: str = "toy"
) -> list[Path]:
    """Write `<prefix>.json` and heatmaps `<prefix>_{train,test}_{early,final}.png` + overview."""
    from loraplus import plots

    out = Path(out_dir)
    paths = [write_json(out / f"{prefix}.json", toy_to_json(result, margin), indent=1)]
    cfg = result.config
    panels = []
    for sp in SPLITS:
        for st in STAGES:
            panel = {
                "lr_a": result.lr_a,
                "lr_b": result.lr_b,
                "loss": result.loss(st, sp),
                "title": f"{sp} loss, step {result.step_of(st)}",
                "cbar_label": f"{sp} MSE",
            }
            panels.append(panel)
            suptitle = (
                f"Toy LoRA MLP (n={cfg.n}, r={cfg.r}, {cfg.init}, {cfg.optimizer.upper()}): "
                f"{sp} loss at step {result.step_of(st)}"
            )
            paths.append(
                plots.plot_lr_heatmap(
                    out / f"{prefix}_{sp}_{st}.png", panel, margin=margin, suptitle=suptitle
                )
            )
    suptitle = (
        f"Toy LoRA MLP (n={cfg.n}, r={cfg.r}, {cfg.init}, {cfg.optimizer.upper()}); "
        f"+ = within {margin:.0%} of best"
    )
    paths.append(
        plots.plot_lr_heatmaps(
            out / f"{prefix}_overview.png", panels, margin=margin, suptitle=suptitle
        )
    )
    return paths
