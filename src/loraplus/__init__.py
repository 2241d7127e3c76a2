"""LoRA+ for PyTorch: lr_B = ratio * lr_A for every LoRA adapter (Hayou, Ghosh, Yu 2024).

model --classify--> {name: Role} --param_groups--> groups --create_optimizer--> optimizer
"""

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

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "POLICY",
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
