"""The toy grid's records: ToyConfig (what one run is), ToyResult (every cell's losses), and
what is read off a result: the best cell, the near-best band, one seed's own grid.

toy.py trains a grid into a ToyResult; toy_io.py writes and reads it (toy.json, heatmaps); both
import this module and neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

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
