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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from loraplus.experiments._toygrid import CellOptimizer, loss_and_grads, make_target

Setup = Literal["paper", "init1", "init2"]
Init = Literal["init1", "init2"]
LossKind = Literal["mse", "broadcast"]
Optimizer = Literal["gd", "adam"]
Readout = Literal["standard", "mup"]
Stage = Literal["early", "final"]
Split = Literal["train", "test"]

SETUPS: tuple[Setup, ...] = ("paper", "init1", "init2")
STAGES: tuple[Stage, ...] = ("early", "final")
SPLITS: tuple[Split, ...] = ("train", "test")
LOSS_KEYS: tuple[str, ...] = tuple(f"{sp}_{st}" for st in STAGES for sp in SPLITS)
PAPER_CAPTION_OPTIMUM = (2.78, 1.29e-4)  # Figure 2 caption: (lr_A*, lr_B*) by test loss at t=200
PAPER_BEST_DIAGONAL = 2.15e-2  # Figure 2 caption: best cell on lr_A = lr_B
BROADCAST_NOTE = (
    "broadcast loss = mean over all pairs (f(x_i) - y_j)^2: a hypothesis about the paper's "
    "figure, not the paper's stated loss"
)


def log2_grid(lo: float, hi: float, num: int) -> tuple[float, ...]:
    """`num` learning rates from 2**lo to 2**hi, evenly spaced in log2."""
    if num < 1 or hi < lo:
        raise ValueError(f"log2_grid needs num >= 1 and hi >= lo, got ({lo}, {hi}, {num}).")
    if num == 1:
        return (float(2.0**lo),)
    return tuple(float(2.0 ** (lo + (hi - lo) * k / (num - 1))) for k in range(num))


def log_grid(lo: float, hi: float, num: int) -> list[float]:
    """`num` learning rates from lo to hi, evenly spaced in log (the paper's 46 over [1e-4, 10])."""
    if num < 1 or not 0 < lo <= hi:
        raise ValueError(f"log_grid needs num >= 1 and 0 < lo <= hi, got ({lo}, {hi}, {num}).")
    return [float(v) for v in log2_grid(math.log2(lo), math.log2(hi), num)]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ToyConfig:
    """Everything that defines one toy grid run; each field is one `experiment toy` flag."""

    setup: Setup = field(
        default="paper",
        metadata=_help(
            "paper: appendix C.1.1 init (W_in~N(0,1), A~N(0,1/n), B~N(0,1)); init1: earlier "
            "reconstruction (W_in~N(0,1/d), B=0, A~N(0,1/n)); init2: W_in~N(0,1/d), A=0, B~N(0,1/r)"
        ),
    )
    loss: LossKind = field(
        default="mse",
        metadata=_help(
            "mse: mean (f(x_i)-y_i)^2, the paper's stated loss; broadcast: mean over all pairs "
            "(f(x_i)-y_j)^2, a hypothesis about the figure's loss level, not the stated loss"
        ),
    )
    n: int = field(default=100, metadata=_help("width of the MLP's hidden layer"))
    d: int = field(default=5, metadata=_help("input dimension"))
    r: int = field(default=4, metadata=_help("LoRA rank"))
    n_train: int = field(default=1000, metadata=_help("training points (full batch)"))
    n_test: int = field(default=100, metadata=_help("test points"))
    optimizer: Optimizer = field(default="gd", metadata=_help("gd (the paper's) or adam"))
    readout: Readout = field(
        default="standard", metadata=_help("standard: W_out~N(0,1/n); mup: W_out~N(0,1/n^2)")
    )
    lr_min: float = field(default=1e-4, metadata=_help("smallest lr of the log-spaced grid"))
    lr_max: float = field(default=10.0, metadata=_help("largest lr of the log-spaced grid"))
    num_lrs: int = field(
        default=46, metadata=_help("grid points per axis, log-spaced over [lr_min, lr_max]")
    )
    lr_a: list[float] | None = field(
        default=None, metadata=_help("explicit lr_A values (overrides the log-spaced grid)")
    )
    lr_b: list[float] | None = field(
        default=None, metadata=_help("explicit lr_B values (overrides the log-spaced grid)")
    )
    steps: int = field(default=200, metadata=_help("gradient steps per cell"))
    early_step: int = field(default=10, metadata=_help("step of the early snapshot"))
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata=_help("seeds; loss grids are averaged over them before the best cell is taken"),
    )
    margin: float = field(
        default=0.01, metadata=_help("band: cells within this fraction of the best loss")
    )
    relu_grad_at_zero: float = field(default=0.5, metadata=_help("ReLU'(0) used by training"))
    blowup: float = field(
        default=1e3, metadata=_help("a cell diverged once its loss exceeds blowup x initial loss")
    )
    adam_betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata=_help("Adam's beta1 beta2")
    )
    adam_eps: float = field(default=1e-8, metadata=_help("Adam's epsilon"))
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata=_help("float type of the grid")
    )
    chunk_mb: float = field(
        default=2.0, metadata=_help("memory per batch of grid cells (MiB); small stays in cache")
    )
    num_threads: int = field(
        default=1,
        metadata=_help("torch CPU threads while training (1 is fastest on a shared machine)"),
    )
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    init: Init | None = field(
        default=None, metadata=_help("older spelling of --setup init1/init2 (sets --setup)")
    )
    seed: int | None = field(
        default=None, metadata=_help("older spelling of --seeds with a single seed")
    )

    def __post_init__(self) -> None:
        self._resolve_aliases()
        for name in ("n", "d", "r", "n_train", "n_test", "steps", "num_lrs", "num_threads"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.early_step <= self.steps:
            raise ValueError(
                f"--early-step {self.early_step} must lie in [0, --steps {self.steps}]."
            )
        for name, allowed in (
            ("setup", SETUPS),
            ("loss", ("mse", "broadcast")),
            ("optimizer", ("gd", "adam")),
            ("readout", ("standard", "mup")),
            ("dtype", ("float32", "float64")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not one of {allowed}.")
        if not 0 < self.lr_min <= self.lr_max:
            raise ValueError(
                f"--lr-min/--lr-max need 0 < min <= max, got {self.lr_min}, {self.lr_max}."
            )
        grid = log_grid(self.lr_min, self.lr_max, self.num_lrs)
        for name in ("lr_a", "lr_b"):
            values = [float(v) for v in (getattr(self, name) or grid)]
            if not values or min(values) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a non-empty list of positive lrs."
                )
            object.__setattr__(self, name, values)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(
                f"--seeds must be distinct integers, e.g. --seeds 0 1 2; got {self.seeds}."
            )
        object.__setattr__(self, "seeds", [int(s) for s in self.seeds])
        if len(self.adam_betas) != 2:
            raise ValueError(f"--adam-betas takes two values, got {self.adam_betas}.")
        object.__setattr__(self, "adam_betas", [float(b) for b in self.adam_betas])
        if self.blowup <= 1:
            raise ValueError(f"--blowup {self.blowup} must be > 1 (x initial loss).")
        if not 0 <= self.margin < 1:
            raise ValueError(f"--margin {self.margin} must lie in [0, 1), e.g. 0.01 for 1%.")

    def _resolve_aliases(self) -> None:
        """Fold the older `init` and `seed` fields into `setup` and `seeds`, then clear them."""
        if self.init is not None:
            if self.init not in ("init1", "init2"):
                raise ValueError(f"--init {self.init!r}: use --setup paper, init1 or init2.")
            if self.setup not in ("paper", self.init):
                raise ValueError(
                    f"--init {self.init} conflicts with --setup {self.setup}; use --setup."
                )
            object.__setattr__(self, "setup", self.init)
            object.__setattr__(self, "init", None)
        if self.seed is not None:
            if list(self.seeds) not in ([0], [self.seed]):
                raise ValueError(
                    f"--seed {self.seed} conflicts with --seeds {self.seeds}; use --seeds."
                )
            object.__setattr__(self, "seeds", [int(self.seed)])
            object.__setattr__(self, "seed", None)
        object.__setattr__(self, "seeds", list(self.seeds))

    @property
    def lrs_a(self) -> list[float]:
        """The resolved lr_A axis (never None after __post_init__)."""
        assert self.lr_a is not None
        return self.lr_a

    @property
    def lrs_b(self) -> list[float]:
        """The resolved lr_B axis."""
        assert self.lr_b is not None
        return self.lr_b

    def describe(self) -> str:
        """A one-line label of the set-up, loss and optimizer, for titles and logs."""
        loss = "MSE" if self.loss == "mse" else "broadcast loss (hypothesis)"
        seeds = f"{len(self.seeds)} seeds" if len(self.seeds) > 1 else f"seed {self.seeds[0]}"
        return (
            f"setup={self.setup}, {loss}, {self.optimizer.upper()}, n={self.n}, r={self.r}, {seeds}"
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


@dataclass
class ToyResult:
    """Losses of every grid cell, (len(lr_a), len(lr_b)) arrays averaged over seeds (inf where
    any seed diverged); `seed_losses[key]` holds each seed's own (seeds, len(lr_a), len(lr_b))."""

    config: ToyConfig
    lr_a: np.ndarray
    lr_b: np.ndarray
    train_early: np.ndarray
    test_early: np.ndarray
    train_final: np.ndarray
    test_final: np.ndarray
    diverged: np.ndarray  # bool: some seed diverged at or before the final step
    diverged_step: np.ndarray  # int: first step any seed blew up, -1 if never
    init_loss: float  # mean over seeds
    seconds: float = 0.0
    seed_losses: dict[str, np.ndarray] = field(default_factory=dict)
    seed_diverged_step: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seed_init_loss: list[float] = field(default_factory=list)

    def loss(self, stage: Stage = "final", split: Split = "train") -> np.ndarray:
        """The (len(lr_a), len(lr_b)) loss array of one split at one stage."""
        if stage not in STAGES or split not in SPLITS:
            raise ValueError(f"Use stage in {STAGES} and split in {SPLITS}, got {stage}, {split}.")
        arr: np.ndarray = getattr(self, f"{split}_{stage}")
        return arr

    def step_of(self, stage: Stage) -> int:
        """The training step at which `stage` was recorded."""
        return self.config.early_step if stage == "early" else self.config.steps


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


def seed_result(result: ToyResult, k: int) -> ToyResult:
    """The k-th seed's own grid as a one-seed ToyResult (for its own best cell)."""
    if not 0 <= k < len(result.config.seeds):
        raise ValueError(f"seed index {k} out of range for seeds {result.config.seeds}.")
    div = result.seed_diverged_step[k]
    return ToyResult(
        config=replace(result.config, seeds=[result.config.seeds[k]]),
        lr_a=result.lr_a,
        lr_b=result.lr_b,
        **{key: result.seed_losses[key][k] for key in LOSS_KEYS},
        diverged=div >= 0,
        diverged_step=div,
        init_loss=result.seed_init_loss[k],
        seconds=result.seconds,
        seed_losses={key: result.seed_losses[key][k : k + 1] for key in LOSS_KEYS},
        seed_diverged_step=div[None],
        seed_init_loss=[result.seed_init_loss[k]],
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


def band(result: ToyResult, stage: Stage = "final", split: Split = "train") -> np.ndarray:
    """(k, 2) indices of the cells within `config.margin` of the best loss (the red band)."""
    loss = result.loss(stage, split)
    if not np.isfinite(loss).any():
        return np.zeros((0, 2), dtype=np.int64)
    return np.argwhere(loss <= float(loss[np.isfinite(loss)].min()) * (1 + result.config.margin))


def format_best(point: BestPoint) -> str:
    """`best lr_A=<x> lr_B=<y> ratio=<y/x> loss=<l>; best on diagonal lr=<z> loss=<m>`."""
    z = "n/a" if point.diag_lr is None else f"{point.diag_lr:.4g}"
    m = "n/a" if point.diag_loss is None else f"{point.diag_loss:.4g}"
    return (
        f"best lr_A={point.lr_a:.4g} lr_B={point.lr_b:.4g} ratio={point.ratio:.4g} "
        f"loss={point.loss:.4g}; best on diagonal lr={z} loss={m}"
    )


# The JSON and figure writers live in toy_io; older callers import them from here.
from loraplus.experiments.toy_io import read_toy_json as read_toy_json  # noqa: E402
from loraplus.experiments.toy_io import toy_to_json as toy_to_json  # noqa: E402
from loraplus.experiments.toy_io import write_toy_outputs as write_toy_outputs  # noqa: E402
