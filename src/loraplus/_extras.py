"""The optional parts of the install: which extra brings which packages, and a one-line refusal.

`pip install -e .` (in a clone; loraplus is not on PyPI) is the core (torch and peft); the extra
`[train]` adds what runs and records training (datasets, tensorboard, matplotlib), `[sweep]` what
sweeps need (optuna, matplotlib). A command or module that needs a missing package names the
packages and the extra to install.
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("datasets", "pandas", "tensorboard", "matplotlib"),
    "sweep": ("optuna", "matplotlib"),
    "plots": ("matplotlib",),
    "trl": ("trl",),  # causal-LM training goes through TRL's SFTTrainer
}
_PIP_EXTRA = {"plots": "train"}  # matplotlib comes with [train] (and [sweep])


def missing(extra: str) -> list[str]:
    """The packages of `extra` that are not installed."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, what: str) -> None:
    """Raise ImportError naming the pip command when a package of `extra` is missing."""
    absent = missing(extra)
    if absent:
        raise ImportError(
            f"{what} needs {', '.join(absent)} (not installed): pip install {' '.join(absent)}, "
            f'or pip install -e ".[{_PIP_EXTRA.get(extra, extra)}]" in the loraplus clone'
        )
