"""ratio="auto": a LoRA+ optimizer that steers each layer's lr_B / lr_A toward balanced δ¹ and δ².

The paper's efficiency condition (§4) asks that A's share δ¹ = s·B·ΔA·z and B's share
δ² = s·ΔB·A·z of a step's feature update be of the same order. Every `every` steps this optimizer
measures both per LoRA layer without forward hooks, as if the inputs z were isotropic:

    ‖B·ΔA‖_F² = Σ (BᵀB) ∘ (ΔA·ΔAᵀ),    ‖ΔB·A‖_F² = Σ (ΔBᵀΔB) ∘ (A·Aᵀ)

(r×r Gram products, O(n·r²) per layer), smooths log2(δ²/δ¹) with an EMA and moves the layer's
log2 ratio against it by a bounded step, clamped to [log2 low, log2 high]. The optimizer stays
the user's own (AdamW, SGD, ...), built once over LoRA+'s param groups at the start ratio; the
controller (`AutoRatio`) attaches through torch's optimizer hooks: after each step, each controlled
B moves `ratio / start` times as far as the step moved it, which for Adam, AdamW and SGD equals that
layer's B having lr = scheduled group lr × ratio / start, so LR schedulers compose; its state
rides in the optimizer's state_dict under "auto_ratio". Under DeepSpeed and FSDP2 it reads and
writes the tensors the optimizer really steps (loraplus.sharded), the same on every rank.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.optim import Optimizer

from loraplus.roles import Role, unwrap
from loraplus.settings import AutoRatioConfig
from loraplus.sharded import (
    LORA_ROLES,
    all_reduce_sum,
    check_whole_groups,
    full_value,
    innermost_optimizer,
    local_master,
    refuse_fsdp1,
    set_local_master,
    stepped_roles,
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


class AutoRatio:
    """The controller of one optimizer, attached through torch's optimizer hooks.

    A step pre-hook remembers each controlled B (and, on measuring steps, A) before the step; the
    post-hook moves each B `ratio / start` times as far as the step moved it and, every `every`
    steps, measures δ¹ and δ² and moves the ratios. State-dict hooks save and restore it under
    "auto_ratio". Under DeepSpeed, which steps the optimizer once per param group on its fp32
    partitions, the hooks act on the groups being stepped and on the fp32 masters (sharded.py).
    """

    def __init__(
        self, optimizer: Optimizer, pairs: Sequence[LoraPair], config: AutoRatioConfig
    ) -> None:
        """Attach to `optimizer` (its class and param groups stay as they are)."""
        self.optimizer, self.auto, self.pairs = optimizer, config, list(pairs)
        self.log2_ratio = [math.log2(config.start)] * len(self.pairs)
        self.balance_ema: list[float | None] = [None] * len(self.pairs)
        self.last_balance: list[float | None] = [None] * len(self.pairs)
        self.auto_steps = 0
        self.warned_half = False  # fp16/bf16 adapters: warned once about A's lost updates
        self.auto_inputs: dict[str, torch.Tensor] = {}
        self._step: dict[str, Any] | None = None  # the step in progress (DeepSpeed: per group)
        self.auto_hooks: list[Any] = []
        if config.signal == "inputs":
            modules = {p.layer: p.module for p in self.pairs if p.module is not None}
            self.auto_hooks = [
                m.register_forward_pre_hook(self._recorder(name)) for name, m in modules.items()
            ]
        self.handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            optimizer.register_state_dict_post_hook(self._save),
            optimizer.register_load_state_dict_pre_hook(self._load),
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
        from loraplus.verdicts import module_kind

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
    def _before_step(self, optimizer: Optimizer, *_: Any) -> None:
        roles = stepped_roles(optimizer) & LORA_ROLES
        if not roles:
            return
        if self._step is None:  # the first group call of this optimizer step
            measure = self.auto_steps % self.auto.every == 0
            start = math.log2(self.auto.start)
            self._step = {
                "measure": measure,
                "factors": [2.0 ** (r - start) for r in self.log2_ratio],
                "done": set(),
                "a0": [full_value(p.a) for p in self.pairs] if measure else [],
                "b0": [full_value(p.b) for p in self.pairs] if measure else [],
            }
        check_whole_groups(roles, self._step["done"], "ratio='auto'")
        if "lora_B" in roles:
            views = [local_master(p.b) for p in self.pairs]
            self._step["b_local"] = [
                (v, v.clone()) if v is not None and f != 1.0 else None
                for v, f in zip(views, self._step["factors"], strict=True)
            ]

    @torch.no_grad()
    def _after_step(self, optimizer: Optimizer, *_: Any) -> None:
        roles = stepped_roles(optimizer) & LORA_ROLES
        if not roles or self._step is None:
            return
        step = self._step
        if "lora_B" in roles:
            for pair, f, local in zip(self.pairs, step["factors"], step["b_local"], strict=True):
                if local is not None:  # b0 + f·(the step's ΔB), in the tensor the step updated
                    view, b0 = local
                    set_local_master(pair.b, view, torch.lerp(b0, view, f))
        step["done"] |= roles
        if step["done"] != LORA_ROLES:
            return  # DeepSpeed: the other LoRA role's group is still to be stepped
        self._step = None
        if step["measure"]:
            self._update(step["a0"], step["b0"])
        self.auto_steps += 1

    def _update(self, old_a: list[torch.Tensor], old_b: list[torch.Tensor]) -> None:
        cfg = self.auto
        if not self.warned_half:
            from loraplus.probe import unmoved_a, warn_half_precision

            found = [  # only half-precision A's: full_value is a collective under sharding
                unmoved_a(p.a, a0, full_value(p.a), b0)
                for p, a0, b0 in zip(self.pairs, old_a, old_b, strict=True)
                if p.a.dtype in (torch.float16, torch.bfloat16)
            ]
            counts = [c for c in found if c is not None]
            if counts:
                self.warned_half = True
                warn_half_precision(counts)
        if cfg.signal == "inputs" and not self.auto_inputs:
            from loraplus.probe import warn_no_inputs

            warn_no_inputs("ratio='auto' (signal='inputs') fell back to the isotropic signal")
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
        a1, b1 = full_value(pair.a), full_value(pair.b)
        if self.auto.signal == "isotropic":
            return isotropic_terms(a0, b0, a1, b1)
        from loraplus.probe import feature_update_sums, rms

        z = self.auto_inputs.get(pair.layer)
        if z is None:  # no input on this rank: add nothing to every rank's sums
            z = torch.zeros(0, a0.shape[1], device=a0.device)
        sums = all_reduce_sum(feature_update_sums(a0, b0, a1, b1, z))  # every rank's tokens
        if sums[3] == 0:
            return isotropic_terms(a0, b0, a1, b1)
        return rms(sums)[:2]

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

    def _save(self, _optimizer: Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        state["auto_ratio"] = self.auto_state()
        return state

    def _load(self, _optimizer: Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        """Restore the controller; a state dict without "auto_ratio" (plain LoRA+) restarts it."""
        auto = state.pop("auto_ratio", None)
        if auto is None:
            return state
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
        return state


def attach_auto_ratio(
    optimizer: Optimizer, model: nn.Module, config: AutoRatioConfig | None = None
) -> AutoRatio:
    """Steer the LoRA+ optimizer `optimizer` (built at ratio `config.start`) per layer.

    The controller is `optimizer.auto_ratio`; `optimizer.ratios()` reads its ratios.
    """
    config = config or AutoRatioConfig()
    refuse_fsdp1(model, "ratio='auto'")
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
    controller = AutoRatio(optimizer, pairs, config)
    setattr(optimizer, "auto_ratio", controller)  # noqa: B010 (an attribute torch does not know)
    setattr(optimizer, "ratios", controller.ratios)  # noqa: B010
    return controller


def controller(optimizer: object) -> AutoRatio | None:
    """The auto-ratio controller of an optimizer under any wrappers (None: not ratio="auto")."""
    found = getattr(innermost_optimizer(optimizer), "auto_ratio", None)
    return found if isinstance(found, AutoRatio) else None


def is_auto(optimizer: object) -> bool:
    """True for an optimizer built with ratio="auto" (also inside Accelerate's or DS's wrapper)."""
    return controller(optimizer) is not None


def auto_ratio_logs(optimizer: object) -> dict[str, float]:
    """{"auto_ratio/q": median ratio of the q layers, ...} for training logs; {} if not auto."""
    found = controller(optimizer)
    if found is None:
        return {}
    return {f"auto_ratio/{k}": statistics.median(v) for k, v in found.ratios_by_kind().items()}
