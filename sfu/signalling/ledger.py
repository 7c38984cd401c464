"""Which WHIP/WHEP sessions this server created, remembered a while after they end.

A session can end on the server's side first: its publisher left (every subscription to that
voice closes with it), its peer failed or never connected. The client still sends the DELETE
that RFC 9725 section 4.2 asks of it; answering that with 200 (`"status": "ended"`) instead of
a 404 tells it the session is gone without making a clean teardown look like an error. The
ledger is bounded (`limit` entries, oldest forgotten first) and entries expire after `ttl`, so
no client can grow it without end; a forgotten session's DELETE is a plain 404.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["publisher", "subscriber"]


@dataclass(frozen=True)
class Issued:
    """A session as its URL names it: room, owner (the token's identity), and for WHEP the
    identity listened to."""

    kind: Kind
    room: str
    owner: str
    target: str | None = None


class SessionLedger:
    """`add` when a session is created, `pop` when its owner deletes it."""

    def __init__(self, limit: int = 10_000, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or ttl <= 0:
            raise ValueError("limit must be at least 1 and ttl positive")
        self.limit, self.ttl, self._clock = limit, ttl, clock
        self._entries: OrderedDict[str, tuple[float, Issued]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, session_id: str, issued: Issued) -> None:
        self._expire()
        self._entries[session_id] = (self._clock() + self.ttl, issued)
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def get(self, session_id: str) -> Issued | None:
        self._expire()
        entry = self._entries.get(session_id)
        return entry[1] if entry else None

    def pop(self, session_id: str) -> Issued | None:
        self._expire()
        entry = self._entries.pop(session_id, None)
        return entry[1] if entry else None

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            first = next(iter(self._entries.values()))
            if first[0] > now:
                break
            self._entries.popitem(last=False)
