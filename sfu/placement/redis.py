"""`RedisPlacement`: rooms placed on SFU nodes through one Redis, with leases and fencing.

Each node registers `node:{id}` (its public URL, capacity in rooms, load, draining) and renews
the lease every beat (1 s beat, 3 s lease). A join asks `claim` (one Lua script, see
`sfu.placement.scripts`): a room whose owner is alive stays there; otherwise it goes to the
least loaded live node that is not draining and has room (rooms placed on a node but not yet
in its reported load count too), under the next fencing epoch. The owner's beat confirms its
rooms; a beat or a claim that shows a room under another node's epoch means this node lost
it (its lease lapsed meanwhile): `on_lost` callbacks stop serving it. A room nobody is in any
more is released. When Redis cannot be reached, joins fail with `PlacementUnavailable` (503)
and the calls in progress go on: nothing on their path waits on Redis; the next beat that gets
through restores the lease and the claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from denoiser.worker.registry import BEAT_S, KEY_PREFIX, LEASE_S, REDIS_ERRORS, connect_redis
from sfu.placement import (
    LoadReader,
    NoCapacity,
    Owner,
    PlacementStats,
    PlacementUnavailable,
    scripts,
)

log = logging.getLogger(__name__)

PENDING_TTL_S = 10.0  # a room placed here counts as load this long before its first session
UNCONFIRMED_TTL_S = 10.0  # a claim nobody arrived for expires after this
RELEASE_GRACE_S = 3.0  # a room claimed here is kept this long waiting for its first session


@dataclass
class _Held:
    epoch: int
    since: float
    seen: bool = False  # had a session here at some beat


class RedisPlacement:
    """This node's view of the cluster's placement (see the module docstring)."""

    def __init__(self, redis_url: str, node_id: str, url: str, capacity: int,
                 hosted: LoadReader, *, prefix: str = KEY_PREFIX, beat_s: float = BEAT_S,
                 lease_s: float = LEASE_S, op_timeout: float = 0.5) -> None:
        self.node_id = node_id
        self.url = url.rstrip("/")
        self.capacity = capacity
        self.prefix = prefix
        self.beat_s = beat_s
        self.lease_ms = int(lease_s * 1000)
        self.op_timeout = op_timeout
        self.stats = PlacementStats()
        self.redis = connect_redis(redis_url, op_timeout)
        self._hosted = hosted
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._locate = self.redis.register_script(scripts.LOCATE)
        self._heartbeat = self.redis.register_script(scripts.HEARTBEAT)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._held: dict[str, _Held] = {}
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._draining = False
        self._reachable = False
        self._registered = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- keys ------------------------------------------------------------------------------
    def _node_key(self, node: str | None = None) -> str:
        return f"{self.prefix}node:{node or self.node_id}"

    def _room_key(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def _pending_key(self, node: str | None = None) -> str:
        return f"{self.prefix}pending:{node or self.node_id}"

    # -- state -----------------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def reachable(self) -> bool:
        return self._reachable

    @property
    def held_rooms(self) -> dict[str, int]:
        """Rooms this node holds, with their epochs."""
        return {room: held.epoch for room, held in self._held.items()}

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._lost_callbacks.append(callback)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Register now if Redis answers (else keep trying in the background) and beat."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="placement-lease")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*REDIS_ERRORS):
            for room, held in list(self._held.items()):
                await self._call(self._release(
                    keys=[self._room_key(room), self._pending_key()],
                    args=[self.node_id, held.epoch, room]))
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._node_key(), self._pending_key())
                pipe.srem(self.prefix + "nodes", self.node_id)
                await self._call(pipe.execute())
            log.info("deregistered", extra={"node_id": self.node_id})
        self._held.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def drain(self) -> None:
        self._draining = True
        await self.beat()

    # -- joins -----------------------------------------------------------------------------
    async def claim(self, room: str) -> Owner:
        started = time.perf_counter()
        try:
            result = await self._call(self._claim(
                keys=[self._room_key(room), self.prefix + "nodes", self.prefix + "epoch"],
                args=[self.prefix, room, self.node_id, int(PENDING_TTL_S * 1000),
                      int(UNCONFIRMED_TTL_S * 1000)]))
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        self.stats.observe_claim(time.perf_counter() - started)
        node, url, epoch, status = result[0], result[1], int(result[2]), int(result[3])
        if status == 2:
            self.stats.decisions["no_capacity"] += 1
            raise NoCapacity("every SFU node is full or draining", retry_after=5)
        return self._learn(room, Owner(node, url, epoch, node == self.node_id))

    async def locate(self, room: str) -> Owner | None:
        try:
            result = await self._call(self._locate(keys=[self._room_key(room)],
                                                   args=[self.prefix]))
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        if not result:
            return None
        return self._learn(room, Owner(result[0], result[1], int(result[2]),
                                       result[0] == self.node_id))

    def _learn(self, room: str, owner: Owner) -> Owner:
        """Keep what a claim or a lookup says about `room` (and lose it if it moved)."""
        self._reachable = True
        held = self._held.get(room)
        if owner.mine:
            if held is None:
                self._held[room] = _Held(owner.epoch, time.monotonic())
            else:
                held.epoch = owner.epoch
            self.stats.decisions["local"] += 1
        else:
            if held is not None:
                self._lose(room)
            self.stats.decisions["redirect"] += 1
        return owner

    def _unavailable(self, exc: BaseException) -> PlacementUnavailable:
        self._reachable = False
        self.stats.redis_errors += 1
        self.stats.decisions["unavailable"] += 1
        return PlacementUnavailable(f"placement unavailable (Redis: {exc or type(exc).__name__})",
                                    retry_after=max(1, round(self.beat_s * 2)))

    def _lose(self, room: str) -> None:
        self._held.pop(room, None)
        self.stats.rooms_lost += 1
        log.warning("room taken over by another node; no longer serving it",
                    extra={"room": room, "node_id": self.node_id})
        for callback in list(self._lost_callbacks):
            try:
                callback(room)
            except Exception:
                log.exception("room-lost callback failed", extra={"room": room})

    # -- the lease -------------------------------------------------------------------------
    async def _call(self, awaitable):  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(awaitable, self.op_timeout)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.beat_s)
            self._wake.clear()
            await self.beat()

    async def beat(self) -> bool:
        """Renew the lease, confirm the rooms served here, release the empty ones; False if
        Redis could not be reached."""
        hosted_rooms, sessions = self._hosted()
        hosted = set(hosted_rooms)
        now = time.monotonic()
        for room in hosted:
            held = self._held.get(room)
            if held is not None:
                held.seen = True
        empty = [room for room, held in self._held.items() if room not in hosted
                 and (held.seen or now - held.since > RELEASE_GRACE_S)]
        try:
            for room in empty:
                held = self._held[room]
                await self._call(self._release(
                    keys=[self._room_key(room), self._pending_key()],
                    args=[self.node_id, held.epoch, room]))
                del self._held[room]
                self.stats.rooms_released += 1
            args: list[str | int] = [self.prefix, self.node_id, self.url, self.capacity,
                                  len(hosted | set(self._held)), sessions, int(self._draining),
                                  self.lease_ms]
            for room in sorted(hosted | set(self._held)):
                held = self._held.get(room)
                args += [room, held.epoch if held else 0]
            result = await self._call(self._heartbeat(
                keys=[self._node_key(), self.prefix + "nodes", self.prefix + "epoch",
                      self._pending_key()], args=args))
        except REDIS_ERRORS as exc:
            if self._reachable or not self.stats.redis_errors:
                log.warning("cannot reach Redis; calls go on, new joins get 503",
                            extra={"node_id": self.node_id, "error": str(exc)})
            self._reachable = False
            self.stats.redis_errors += 1
            return False
        alive, n_lost = int(result[0]), int(result[1])
        lost, restored = result[2:2 + n_lost], result[2 + n_lost:]
        if not alive and self._registered:
            self.stats.lease_lapses += 1
            log.warning("our lease had lapsed; registered again",
                        extra={"node_id": self.node_id, "lost": len(lost)})
        if not self._reachable:
            log.info("registered in Redis", extra={"node_id": self.node_id, "url": self.url,
                                                   "rooms": len(hosted)})
        self._registered = self._reachable = True
        for room, epoch in zip(restored[::2], restored[1::2], strict=True):
            held = self._held.get(room)
            if held is None:
                self._held[room] = _Held(int(epoch), now, seen=room in hosted)
            else:
                held.epoch = int(epoch)
        for room in lost:
            self._lose(room)
        return True

    def wake(self) -> None:
        """Beat now (a room emptied, say) instead of at the next tick."""
        self._wake.set()
