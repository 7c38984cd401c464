"""The engine's bookkeeping on the event loop: a request, its pending hops, a stream's queue."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Request:
    """One `process` call: one future for all its hops (not one per hop and a gather: the
    event loop's share of a tick grows with every future it resolves)."""

    future: asyncio.Future[np.ndarray]
    outs: list[np.ndarray | None]
    remaining: int

    def answer(self, index: int, out: np.ndarray) -> None:
        """Hop `index` of the request came back; the last one resolves the future."""
        if self.future.done():  # failed already, or a cancelled caller (its state still moved)
            return
        self.outs[index] = out
        self.remaining -= 1
        if not self.remaining:
            outs = self.outs
            self.future.set_result(outs[0] if len(outs) == 1  # type: ignore[arg-type]
                                   else np.concatenate(outs))  # type: ignore[arg-type]

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class Pending:
    hop: np.ndarray
    request: Request
    index: int  # which hop of the request
    arrived: float


@dataclass
class StreamQueue:
    slot: int
    queue: deque[Pending] = field(default_factory=deque)
