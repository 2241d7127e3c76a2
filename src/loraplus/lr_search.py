"""The lr_A line search as a pure function: the results so far -> the next (lr_A, seed) cells.

A line of lr_A values around a centre (or a given first line) at the first seed; while the best
sits on an edge, one more lr_A a step past it (at most `extend` times; a line that only diverged
goes down); optionally refined by sqrt(step) around the best; then the other seeds at the chosen
lr_A, all within a run budget. No state and no Optuna: `loraplus tune` keeps its state in an Optuna
study and `loraplus experiment methods` in a JSON file; both ask `plan` what to run next.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Point = tuple[float, int]  # (lr_a, seed) of one method


def mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    """'mean ± std' of the finite values (over seeds); one value alone; 'n/a' if none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{statistics.mean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f}"


def _lr(value: float, digits: int | None = 6) -> float:
    """An lr_A of the search, to `digits` significant digits (4 * 1e-4 is 4e-4, as in a table);
    None: as computed."""
    return value if digits is None else float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class Search:
    """One method's search: centre, step, extensions, refinement, seeds, budget, direction; the
    first line (default: centre / step, centre, centre * step) and the lr_A rounding."""

    centre: float
    step: float
    extend: int
    refine: bool
    seeds: tuple[int, ...]
    max_runs: int | None
    sign: float  # +1: higher is better (accuracy); -1: lower is better (loss)
    line: tuple[float, ...] = ()  # the first line's lr_A values, if not the three around centre
    digits: int | None = 6  # significant digits of every lr_A (None: as computed)


@dataclass
class Plan:
    """Where one method's search stands: the runs it used (in order), those still to run, the
    chosen lr_A (best at the first seed so far; None without a finite value), the budget."""

    runs: list[Point]
    todo: list[Point]
    chosen: float | None
    budget_reached: bool


class _Walk:
    """The search's bookkeeping while `plan` walks its stages."""

    def __init__(self, search: Search, results: Mapping[Point, float | None]) -> None:
        self.search, self.results = search, results
        self.runs: list[Point] = []
        self.budget_reached = False

    def take(self, points: Sequence[Point]) -> bool:
        """Use `points` (within the budget); True when each has a result, so the walk goes on."""
        for point in points:
            if point in self.runs:
                continue
            if self.search.max_runs is not None and len(self.runs) >= self.search.max_runs:
                self.budget_reached = True
                return False
            self.runs.append(point)
        return all(p in self.results for p in self.runs)

    def tried(self) -> list[float]:
        """The lr_A values run at the first seed, ascending."""
        return sorted(lr for lr, seed in self.runs if seed == self.search.seeds[0])

    def best(self) -> float | None:
        """The lr_A with the best finite value at the first seed (the smaller on a tie)."""
        seed = self.search.seeds[0]
        scored = [(lr, self.results.get((lr, seed))) for lr in self.tried()]
        finite = [(lr, v) for lr, v in scored if v is not None and math.isfinite(v)]
        if not finite:
            return None
        return max(finite, key=lambda p: self.search.sign * p[1])[0]

    def plan(self) -> Plan:
        todo = [p for p in self.runs if p not in self.results]
        return Plan(list(self.runs), todo, self.best(), self.budget_reached)


def plan(search: Search, results: Mapping[Point, float | None]) -> Plan:
    """The search so far, given the results of (lr_A, seed) cells (None: ran, no value, e.g.
    diverged); its `todo` are the cells to run next (none: the search is done)."""
    walk = _Walk(search, results)
    seed, step, digits = search.seeds[0], search.step, search.digits
    line = search.line or (search.centre / step, search.centre, search.centre * step)
    if not walk.take([(_lr(lr, digits), seed) for lr in line]):
        return walk.plan()
    for _ in range(search.extend):
        tried, best = walk.tried(), walk.best()
        if best is None or best == tried[0]:  # nothing finite: lower the lr
            new = tried[0] / step
        elif best == tried[-1]:
            new = tried[-1] * step
        else:
            break
        if not walk.take([(_lr(new, digits), seed)]):
            return walk.plan()
    best = walk.best()
    if search.refine and best is not None:
        half = math.sqrt(step)
        pair = [(_lr(best / half, digits), seed), (_lr(best * half, digits), seed)]
        if not walk.take(pair):
            return walk.plan()
    best = walk.best()
    if best is not None:
        walk.take([(best, s) for s in search.seeds[1:]])
    return walk.plan()
