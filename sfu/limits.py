"""Session caps: per identity, per client address, and per node, across WHIP, WHEP and the
room socket together.

Each session (a WHIP publish, a WHEP subscription, a joined WebSocket) holds one `SessionSlot`
from `SessionLimits.acquire` until it ends; every session has at most one peer connection, so
the node-wide cap is the cap on peer connections. A full cap is `TooManyRequests` (429 with
`Retry-After`), counted in `denoise_sfu_sessions_refused_total{reason}`. Release is
idempotent, and the WHIP/WHEP handlers release a slot when its peer connection closes, which
every way a session ends (DELETE, peer failed, media deadline, room moved, shutdown) does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from sfu.errors import TooManyRequests

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from sfu.metrics import Metrics

RETRY_AFTER_S = 5


@dataclass(eq=False)
class SessionSlot:
    """One session's place in the counts; `release()` gives it back (once)."""

    limits: SessionLimits
    identity: tuple[str, str]  # (room, identity): identities are names within a room
    address: str
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limits._release(self)

    def release_on_close(self, pc: RTCPeerConnection) -> None:
        """Release when `pc` reaches `closed` (however the session ends)."""
        def on_state() -> None:
            if pc.connectionState == "closed":
                self.release()
        pc.on("connectionstatechange", on_state)


class SessionLimits:
    """Counts of live sessions by identity, by address, and in all; caps from the settings."""

    def __init__(self, per_identity: int, per_address: int, total: int,
                 metrics: Metrics | None = None) -> None:
        self.per_identity, self.per_address, self.total = per_identity, per_address, total
        self.metrics = metrics
        self.by_identity: Counter[tuple[str, str]] = Counter()
        self.by_address: Counter[str] = Counter()
        self.active = 0

    def acquire(self, room: str, identity: str, address: str | None) -> SessionSlot:
        """A slot for one more session of `identity` in `room` from `address`, or 429."""
        key, addr = (room, identity), address or "unknown"
        if self.active >= self.total:
            self._refuse("node", f"this node has its maximum of {self.total} sessions")
        if self.by_identity[key] >= self.per_identity:
            self._refuse("identity", f"{identity!r} already has {self.per_identity} sessions "
                         f"in room {room!r}")
        if self.by_address[addr] >= self.per_address:
            self._refuse("address", f"this address already has {self.per_address} sessions")
        self.by_identity[key] += 1
        self.by_address[addr] += 1
        self.active += 1
        return SessionSlot(self, key, addr)

    def _refuse(self, reason: str, message: str) -> None:
        if self.metrics is not None:
            self.metrics.sessions_refused.labels(reason).inc()
        raise TooManyRequests(message, "too_many_sessions", retry_after=RETRY_AFTER_S)

    def _release(self, slot: SessionSlot) -> None:
        self.active -= 1
        self.by_identity[slot.identity] -= 1
        if self.by_identity[slot.identity] <= 0:
            del self.by_identity[slot.identity]
        self.by_address[slot.address] -= 1
        if self.by_address[slot.address] <= 0:
            del self.by_address[slot.address]


LIMITS = web.AppKey("denoise_sfu_session_limits", SessionLimits)
