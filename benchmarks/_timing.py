"""What the perf scripts share: the order of interleaved rounds, and a clock for `train` runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from transformers import TrainerCallback

T = TypeVar("T")


def interleaved(items: Sequence[T], rounds: int, rotate: bool = False) -> Iterator[T]:
    """Every item once per round, the order reversed every other round (rotate: shifted by one
    each round), so machine drift and warm-up hit every item alike."""
    items = list(items)
    for r in range(rounds):
        k = r % len(items)
        yield from (items[k:] + items[:k]) if rotate else items[:: 1 if r % 2 == 0 else -1]


class Clock(TrainerCallback):
    """A `train` run's loop time from the start of step `start_step` (1: the first step warms up)
    to its end, less evaluations; each checkpoint write, timed from the event before it; with
    `rss`, the peak resident memory while training (sampled every 20 ms)."""

    def __init__(self, start_step: int = 0, rss: bool = False) -> None:
        self.start_step, self.rss = start_step, rss
        self.begin = self.end = self.mark = self.evals = 0.0
        self.saves: list[float] = []
        self.peak = 0
        self.stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, me.memory_info().rss)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.rss:
            threading.Thread(target=self._sample, daemon=True).start()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not self.begin and state.global_step == self.start_step:
            self.begin = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.mark = time.perf_counter()

    on_log = on_step_end

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        if self.begin:  # not the step-0 evaluation
            self.evals += now - self.mark
        self.mark = now

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        self.saves.append(now - self.mark)
        self.mark = now

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.end = time.perf_counter()
        self.stop.set()

    def per_step(self, steps: int) -> float:
        """Seconds per timed step of a `steps`-step run: checkpoint writes in, evaluations out."""
        return (self.end - self.begin - self.evals) / (steps - self.start_step)
