"""LoRA+ for PyTorch: lr_B = ratio * lr_A for every LoRA adapter (Hayou, Ghosh, Yu 2024).

LoraPlusSettings + model --classify--> {name: Role} --param_groups--> groups
    --create_optimizer--> optimizer
"""

from typing import Any

from loraplus.groups import POLICY, RolePolicy, param_groups, role_lrs
from loraplus.init import init_lora_
from loraplus.optim import (
    OPTIMIZERS,
    create_loraplus_optimizer,
    create_optimizer,
    resolve_optimizer,
    summary,
)
from loraplus.roles import Role, classify
from loraplus.settings import LoraPlusSettings

__version__ = "0.1.0"

_LAZY = {
    "FeatureUpdateProbe": "loraplus.probe",
    "FeatureUpdateCallback": "loraplus.hf.callbacks",
}
_MOVED_TO_HF = ()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED_TO_HF:
        raise AttributeError(
            f"loraplus.{name} lives in loraplus.hf: from loraplus.hf import {name}"
        )
    raise AttributeError(f"module 'loraplus' has no attribute {name!r}")


__all__ = [
    "OPTIMIZERS",
    "POLICY",
    "FeatureUpdateCallback",
    "FeatureUpdateProbe",
    "LoraPlusSettings",
    "Role",
    "RolePolicy",
    "__version__",
    "classify",
    "create_loraplus_optimizer",
    "create_optimizer",
    "init_lora_",
    "param_groups",
    "resolve_optimizer",
    "role_lrs",
    "summary",
]
