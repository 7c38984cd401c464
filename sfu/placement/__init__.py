"""Where rooms live: the `Placement` Protocol, in memory (one node) or in Redis (many nodes).

Every join asks the node's `Placement` who owns its room (`claim` for a publisher, `locate`
for a listener). The owner serves it; any other node answers 307 to the owner's public URL.
An owner holds its room under a fencing epoch that only grows: a claim made after the owner's
lease lapsed carries a larger epoch, and the old owner, seeing it, stops serving the room
(`on_lost`). Nothing on the audio path ever waits on a placement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Owner:
    """The node a room lives on, and the epoch of its claim."""

    node: str
    url: str
    epoch: int
    mine: bool


class PlacementUnavailable(Exception):
    """No placement can be made now (Redis unreachable): the join gets 503 + Retry-After."""

    code = "placement_unavailable"

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoCapacity(PlacementUnavailable):
    """Every live node is full or draining."""

    code = "no_capacity"


@dataclass
class PlacementStats:
    """Counted decisions, read by `sfu.placement.metrics` at scrape time."""

    decisions: Counter[str] = field(default_factory=Counter)  # local, redirect, unavailable, ...
    claim_seconds: list[float] = field(default_factory=list)  # recent claim round trips
    rooms_lost: int = 0  # rooms another node took over (fencing)
    rooms_released: int = 0
    lease_lapses: int = 0  # heartbeats that found our lease gone
    redis_errors: int = 0

    def observe_claim(self, seconds: float, keep: int = 1024) -> None:
        self.claim_seconds.append(seconds)
        if len(self.claim_seconds) > keep:
            del self.claim_seconds[: len(self.claim_seconds) - keep]


#: What a placement reads of the node it runs on: (rooms hosted here with sessions, sessions).
LoadReader = Callable[[], tuple[list[str], int]]


class Placement(Protocol):
    """The seam between the signalling handlers and where rooms live."""

    node_id: str
    url: str
    stats: PlacementStats

    @property
    def draining(self) -> bool: ...

    @property
    def reachable(self) -> bool:
        """Whether the last exchange with the coordinator worked (always True in memory)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Deregister at once (a clean stop) and release every room still held."""
        ...

    async def claim(self, room: str) -> Owner:
        """The owner of `room`, placing it first if nobody owns it (PlacementUnavailable)."""
        ...

    async def locate(self, room: str) -> Owner | None:
        """The live owner of `room`, or None; places nothing (PlacementUnavailable)."""
        ...

    async def drain(self) -> None:
        """Take no new rooms from now on (and say so to the other nodes)."""
        ...

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(room)` when another node took `room` over: stop serving it."""
        ...
