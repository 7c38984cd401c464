"""`MemoryPlacement`: one node owns every room (the embedded default, without `--redis`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from sfu.placement import NoCapacity, Owner, PlacementStats


class MemoryPlacement:
    """Every room is this node's; a draining node (or a full one) takes no new room."""

    def __init__(self, node_id: str, url: str, max_rooms: int | None = None,
                 hosted: Callable[[], list[str]] | None = None) -> None:
        self.node_id = node_id
        self.url = url
        self.max_rooms = max_rooms
        self.stats = PlacementStats()
        self._hosted = hosted or (lambda: [])
        self._epochs = itertools.count(1)
        self._rooms: dict[str, int] = {}
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def reachable(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._rooms.clear()

    async def claim(self, room: str) -> Owner:
        hosted = set(self._hosted())
        for name in [r for r in self._rooms if r not in hosted]:
            del self._rooms[name]  # emptied since: released
        if room not in self._rooms:
            if self._draining:
                self.stats.decisions["no_capacity"] += 1
                raise NoCapacity("this node is draining and takes no new rooms", retry_after=5)
            if self.max_rooms is not None and len(hosted) >= self.max_rooms:
                self.stats.decisions["no_capacity"] += 1
                raise NoCapacity(f"this node already holds {len(hosted)} rooms")
            self._rooms[room] = next(self._epochs)
        self.stats.decisions["local"] += 1
        return Owner(self.node_id, self.url, self._rooms[room], True)

    async def locate(self, room: str) -> Owner | None:
        epoch = self._rooms.get(room)
        return None if epoch is None else Owner(self.node_id, self.url, epoch, True)

    async def drain(self) -> None:
        self._draining = True

    def on_lost(self, callback: Callable[[str], None]) -> None:
        return None  # nobody else can take a room
