"""ratio="auto": a LoRA+ optimizer that steers each layer's lr_B / lr_A toward balanced δ¹ and δ².

The paper's efficiency condition (§4) asks that A's share δ¹ = s·B·ΔA·z and B's share
δ² = s·ΔB·A·z of a step's feature update be of the same order. Every `every` steps this optimizer
measures both per LoRA layer without hooks, as if the inputs z were isotropic:

    ‖B·ΔA‖_F² = Σ (BᵀB) ∘ (ΔA·ΔAᵀ),    ‖ΔB·A‖_F² = Σ (ΔBᵀΔB) ∘ (A·Aᵀ)

(r×r Gram products, O(n·r²) per layer), smooths log2(δ²/δ¹) with an EMA and moves the layer's
log2 ratio against it by a bounded step, clamped to [log2 low, log2 high]. The optimizer is the
user's own class (AdamW, SGD, ...) with `step`, `state_dict` and `load_state_dict` extended: the
param groups are LoRA+'s at the start ratio, and after the inner step each controlled B moves
`ratio / start` times as far as the inner step moved it, which for Adam, AdamW and SGD equals that
layer's B having lr = scheduled group lr × ratio / start, so LR schedulers compose.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.optim import Optimizer

from loraplus.roles import Role, unwrap


@dataclass(frozen=True)
class AutoRatioConfig:
    """The controller's settings; the defaults are the ones the tests and benchmarks use."""

    start: float = 16.0  # the paper's default ratio, where every layer begins
    low: float = 1.0  # ratio 1 is plain LoRA: never train B slower than A
    high: float = 1024.0  # 2^10
    every: int = 10  # measure and update every `every` optimizer steps
    target: float = 0.0  # wanted log2(δ²/δ¹) of the isotropic proxy; 0 = balanced
    gain: float = 0.5  # octaves of ratio per octave of (EMA balance - target)
    max_step: float = 0.25  # at most this many octaves of ratio per update
    ema: float = 0.5  # weight of the previous EMA value
    signal: str = "isotropic"  # or "inputs": δ¹, δ² on the step's real inputs (forward hooks)
    max_tokens: int = 512  # "inputs": tokens kept per layer

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.start <= self.high:
            raise ValueError(
                f"auto ratio needs 0 < low <= start <= high, got low={self.low}, "
                f"start={self.start}, high={self.high}."
            )
        if self.signal not in ("isotropic", "inputs"):
            raise ValueError(
                f"auto ratio signal must be 'isotropic' or 'inputs', got {self.signal!r}."
            )
        if self.every < 1:
            raise ValueError(f"auto ratio `every` must be >= 1 step, got {self.every}.")
        if not 0 <= self.ema < 1 or self.gain <= 0 or self.max_step <= 0:
            raise ValueError(
                f"auto ratio needs 0 <= ema < 1, gain > 0 and max_step > 0, got ema={self.ema}, "
                f"gain={self.gain}, max_step={self.max_step}."
            )


@dataclass(frozen=True)
class LoraPair:
    """One adapter of one LoRA Linear layer: its A (r × n_in) and B (n_out × r)."""

    layer: str
    adapter: str
    a: torch.Tensor
    b: torch.Tensor
    module: nn.Module | None = None  # the LoraLayer, where signal="inputs" records its inputs

    @property
    def key(self) -> str:
        """ "layer" for the default adapter, "layer[adapter]" otherwise."""
        return self.layer if self.adapter == "default" else f"{self.layer}[{self.adapter}]"


def lora_pairs(model: nn.Module) -> list[LoraPair]:
    """Every trainable (A, B) pair of the PEFT LoRA Linear layers in `model`."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for key, a_mod in module.lora_A.items():
            b_mod = module.lora_B[key]
            if isinstance(a_mod, nn.Linear) and a_mod.weight.requires_grad:
                b_weight = cast(torch.Tensor, b_mod.weight)
                pairs.append(LoraPair(name, key, a_mod.weight, b_weight, cast(nn.Module, module)))
    return pairs


@torch.no_grad()
def isotropic_terms(
    a0: torch.Tensor, b0: torch.Tensor, a1: torch.Tensor, b1: torch.Tensor
) -> torch.Tensor:
    """[‖B·ΔA‖_F, ‖ΔB·A‖_F] as a 2-element tensor: δ¹ and δ² for isotropic unit inputs."""
    da, db = (a1 - a0).float(), (b1 - b0).float()
    a, b = a0.float(), b0.float()
    d1 = ((b.T @ b) * (da @ da.T)).sum()
    d2 = ((db.T @ db) * (a @ a.T)).sum()
    return torch.stack([d1, d2]).clamp_min(0).sqrt()


class AutoRatioMixin:
    """Adds the ratio controller to an optimizer class; see the module docstring."""

    auto: AutoRatioConfig
    pairs: list[LoraPair]
    log2_ratio: list[float]
    balance_ema: list[float | None]
    auto_steps: int
    last_balance: list[float | None]

    def _init_auto(self, pairs: Sequence[LoraPair], config: AutoRatioConfig) -> None:
        self.auto, self.pairs = config, list(pairs)
        self.log2_ratio = [math.log2(config.start)] * len(self.pairs)
        self.balance_ema = [None] * len(self.pairs)
        self.last_balance = [None] * len(self.pairs)
        self.auto_steps = 0
        self.auto_inputs: dict[str, torch.Tensor] = {}
        self.auto_hooks: list[Any] = []
        if config.signal == "inputs":
            modules = {p.layer: p.module for p in self.pairs if p.module is not None}
            self.auto_hooks = [
                m.register_forward_pre_hook(self._recorder(name)) for name, m in modules.items()
            ]

    def _recorder(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.auto_steps % self.auto.every == 0:  # the coming step measures
                x = args[0].detach()
                self.auto_inputs[name] = x.reshape(-1, x.shape[-1])[-self.auto.max_tokens :].clone()

        return hook

    def ratios(self) -> dict[str, float]:
        """{layer (or "layer[adapter]"): its current lr_B / lr_A}."""
        return {p.key: 2.0**r for p, r in zip(self.pairs, self.log2_ratio, strict=True)}

    def ratios_by_kind(self) -> dict[str, list[float]]:
        """{module kind (q, k, v, o, mlp, ...): the ratios of its layers}."""
        from loraplus.diagnose import module_kind

        out: dict[str, list[float]] = {}
        for pair, log2_ratio in zip(self.pairs, self.log2_ratio, strict=True):
            out.setdefault(module_kind(pair.layer), []).append(2.0**log2_ratio)
        return out

    def ratio_lines(self) -> list[str]:
        """Lines for loraplus.summary(): the ratio lr_B / lr_A chosen so far, per module kind."""
        cfg = self.auto
        lines = [
            f"ratio auto (lr_B / lr_A per layer; start {cfg.start:g}, range [{cfg.low:g}, "
            f"{cfg.high:g}], every {cfg.every} steps, {self.auto_steps} so far; the lora_B lr "
            "above is at the start ratio):"
        ]
        for kind, values in self.ratios_by_kind().items():
            lines.append(
                f"  {kind:<5} {len(values):3d} layers  median {statistics.median(values):7.3g}"
                f"  min {min(values):7.3g}  max {max(values):7.3g}"
            )
        return lines

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """The inner optimizer's step, each B's move scaled to its ratio; every k: a new ratio."""
        measure = self.auto_steps % self.auto.every == 0
        start = math.log2(self.auto.start)
        factors = [2.0 ** (r - start) for r in self.log2_ratio]
        old_b = [
            p.b.detach().clone() if measure or f != 1.0 else None
            for p, f in zip(self.pairs, factors, strict=True)
        ]
        old_a = [p.a.detach().clone() for p in self.pairs] if measure else []
        loss = super().step(closure)  # type: ignore[misc]
        for p, f, b0 in zip(self.pairs, factors, old_b, strict=True):
            if f != 1.0 and b0 is not None:
                p.b.copy_(torch.lerp(b0, p.b.detach(), f))  # b0 + f·(inner step's ΔB)
        if measure:
            self._update(old_a, [b for b in old_b if b is not None])
        self.auto_steps += 1
        return loss

    def _update(self, old_a: list[torch.Tensor], old_b: list[torch.Tensor]) -> None:
        cfg = self.auto
        terms = [self._terms(p, a0, b0) for p, a0, b0 in zip(self.pairs, old_a, old_b, strict=True)]
        self.auto_inputs = {}
        values = torch.stack(terms).tolist() if terms else []  # one device sync
        for i, (d1, d2) in enumerate(values):
            if not (d1 > 0 and d2 > 0 and math.isfinite(d1) and math.isfinite(d2)):
                self.last_balance[i] = None  # B = 0 or A = 0: no balance to steer by yet
                continue
            bal = math.log2(d2 / d1)
            self.last_balance[i] = bal
            prev = self.balance_ema[i]
            ema = bal if prev is None else cfg.ema * prev + (1 - cfg.ema) * bal
            self.balance_ema[i] = ema
            move = max(-cfg.max_step, min(cfg.max_step, cfg.gain * (ema - cfg.target)))
            lo, hi = math.log2(cfg.low), math.log2(cfg.high)
            self.log2_ratio[i] = max(lo, min(hi, self.log2_ratio[i] - move))

    def _terms(self, pair: LoraPair, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        z = self.auto_inputs.get(pair.layer)
        if z is None:
            return isotropic_terms(a0, b0, pair.a.detach(), pair.b.detach())
        from loraplus.diagnostics import feature_update_terms

        d1, d2, _ = feature_update_terms(a0, b0, pair.a.detach(), pair.b.detach(), z)
        return torch.tensor([d1, d2], device=a0.device)

    def auto_state(self) -> dict[str, Any]:
        """The controller's state as plain Python values (what state_dict() stores)."""
        return {
            "config": asdict(self.auto),
            "layers": [p.key for p in self.pairs],
            "log2_ratio": list(self.log2_ratio),
            "balance_ema": list(self.balance_ema),
            "last_balance": list(self.last_balance),
            "steps": self.auto_steps,
        }

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus the controller's state under "auto_ratio"."""
        state = cast(dict[str, Any], super().state_dict())  # type: ignore[misc]
        state["auto_ratio"] = self.auto_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore both; a state dict without "auto_ratio" (plain LoRA+) restarts the controller."""
        state = dict(state_dict)
        auto = state.pop("auto_ratio", None)
        super().load_state_dict(state)  # type: ignore[misc]
        if auto is None:
            return
        names = [p.key for p in self.pairs]
        if list(auto["layers"]) != names:
            raise ValueError(
                "The auto-ratio state was saved for other LoRA layers "
                f"({len(auto['layers'])} saved, {len(names)} here); resume with the same "
                "model and adapters, or drop the 'auto_ratio' entry to restart the controller."
            )
        self.log2_ratio = [float(v) for v in auto["log2_ratio"]]
        self.balance_ema = [None if v is None else float(v) for v in auto["balance_ema"]]
        self.last_balance = [None if v is None else float(v) for v in auto["last_balance"]]
        self.auto_steps = int(auto["steps"])


_CLASSES: dict[type[Optimizer], type[Optimizer]] = {}


def _auto_class(base: type[Optimizer]) -> type[Optimizer]:
    if base not in _CLASSES:
        _CLASSES[base] = type(f"AutoRatio{base.__name__}", (AutoRatioMixin, base), {})
    return _CLASSES[base]


def with_auto_ratio(
    optimizer: Optimizer, model: nn.Module, config: AutoRatioConfig | None = None
) -> Optimizer:
    """Turn a LoRA+ optimizer built at ratio `config.start` into its auto-ratio version in place."""
    config = config or AutoRatioConfig()
    in_b = {
        id(p)
        for g in optimizer.param_groups
        if g.get("role") == Role.LORA_B.value
        for p in g["params"]
    }
    pairs = [p for p in lora_pairs(model) if id(p.b) in in_b]
    if not pairs:
        raise ValueError(
            "ratio='auto' found no PEFT LoRA Linear layer whose B is in the optimizer's lora_B "
            "group; wrap the model with peft.get_peft_model(...) or pass a number as ratio."
        )
    optimizer.__class__ = _auto_class(type(optimizer))
    cast(AutoRatioMixin, optimizer)._init_auto(pairs, config)
    return optimizer


def is_auto(optimizer: object) -> bool:
    """True for an optimizer built with ratio="auto" (also inside Accelerate's wrapper)."""
    return isinstance(getattr(optimizer, "optimizer", optimizer), AutoRatioMixin)


def create_auto_optimizer(
    model: nn.Module,
    optimizer_cls: str | type[Optimizer] = "adamw",
    *,
    lr: float | str,
    auto_ratio: AutoRatioConfig | None = None,
    lr_multipliers: Mapping[Role | str, float] | None = None,
    lr_roles: Mapping[Role | str, float] | None = None,
    **kwargs: Any,
) -> Optimizer:
    """create_optimizer(..., ratio="auto"): LoRA+ at `auto_ratio.start`, then the controller."""
    from loraplus.optim import create_optimizer
    from loraplus.roles import as_role

    config = auto_ratio or AutoRatioConfig()
    for name, given in (("lr_multipliers", lr_multipliers), ("lr_roles", lr_roles)):
        if any(as_role(k) == Role.LORA_B for k in (given or {})):
            raise ValueError(
                f"ratio='auto' sets lora_B's learning rate itself; drop lora_B from {name} "
                "or pass a number as ratio."
            )
    optimizer = create_optimizer(
        model,
        optimizer_cls,
        lr=lr,
        ratio=config.start,
        lr_multipliers=lr_multipliers,
        lr_roles=lr_roles,
        **kwargs,
    )
    return with_auto_ratio(optimizer, model, config)


def auto_ratio_logs(optimizer: object) -> dict[str, float]:
    """{"auto_ratio/q": median ratio of the q layers, ...} for training logs; {} if not auto."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, AutoRatioMixin):
        return {}
    return {f"auto_ratio/{k}": statistics.median(v) for k, v in inner.ratios_by_kind().items()}
