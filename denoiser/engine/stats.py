"""What an engine measures about itself: tick times, batch sizes, late and failed hops."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Series:
    """A running record of one measurement: totals plus the most recent values for percentiles."""

    def __init__(self, keep: int = 100_000) -> None:
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=keep)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)

    def percentile(self, q: float) -> float:
        if not self.recent:
            return math.nan
        return float(np.percentile(np.fromiter(self.recent, dtype=np.float64), q))

    def summary(self) -> dict[str, float]:
        mean = self.total / self.count if self.count else math.nan
        return {"count": self.count, "mean": mean, "p50": self.percentile(50),
                "p99": self.percentile(99), "max": max(self.recent, default=math.nan)}


@dataclass
class EngineStats:
    """What the engine has done: ticks, batch sizes, and how long ticks and forwards took (ms).

    `wait_ms`: first hop of a tick arriving -> tick closing; `forward_ms`: the worker-thread part
    (copy in, gather, step, scatter, copy out); `tick_ms`: first hop arriving -> results resolved.
    """

    ticks: int = 0
    hops: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)  # per round (one hop per stream)
    hops_per_call: Counter[int] = field(default_factory=Counter)  # T of each model call
    errors: Counter[str] = field(default_factory=Counter)
    wait_ms: Series = field(default_factory=Series)
    forward_ms: Series = field(default_factory=Series)
    tick_ms: Series = field(default_factory=Series)

    def snapshot(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "hops": self.hops,
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
                "hops_per_call": dict(sorted(self.hops_per_call.items())),
                "errors": dict(self.errors), "wait_ms": self.wait_ms.summary(),
                "forward_ms": self.forward_ms.summary(), "tick_ms": self.tick_ms.summary()}
