"""Load a benchmarks/ script as a module, for the tests of the studies."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[1]


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as module `name` (benchmarks/ on sys.path while it loads, so a
    script that imports a sibling, as convergence_study imports paper_study, finds it)."""
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)
