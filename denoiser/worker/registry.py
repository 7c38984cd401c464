"""Workers in Redis: each registers its address, slots and load under a lease it renews.

A worker (`denoise-sfu worker --redis URL`) writes `{prefix}worker:{id}`, a hash of its
advertised `address`, `capacity` (stream slots), `load` (streams open), `draining`, and keeps
the key alive with a lease (PEXPIRE, renewed every beat; 1 s beat, 3 s lease by default). A
lapsed lease means the worker is gone; a clean stop deletes the key at once. SFU nodes read the
live workers with `read_workers` (`denoiser.worker.redis_pool.RedisWorkerPool`). Redis only
coordinates: no audio goes through it, and nothing waits on it on the audio path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# What redis-py accepts as a hash field or value.
RedisValue = str | bytes | bytearray | memoryview | int | float

log = logging.getLogger(__name__)

KEY_PREFIX = "dsfu:"
BEAT_S = 1.0
LEASE_S = 3.0
#: What a failed exchange with Redis raises (the caller treats Redis as unreachable).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def connect_redis(url: str, timeout: float = 0.5, max_connections: int = 32) -> Redis:
    """A client that fails fast (no retries, `timeout` per socket operation, and at most
    `timeout` waiting for one of `max_connections`): a caller that cannot reach Redis learns
    it at once and decides what to do (answer 503, keep serving)."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, decode_responses=True, health_check_interval=0)
    return Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker as it last reported itself."""

    worker_id: str
    address: str
    capacity: int
    load: int
    draining: bool

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.load)


def worker_key(prefix: str, worker_id: str) -> str:
    return f"{prefix}worker:{worker_id}"


async def read_workers(redis: Redis, prefix: str = KEY_PREFIX) -> list[WorkerInfo]:
    """Every worker whose lease is alive (REDIS_ERRORS when Redis cannot be reached)."""
    ids = sorted(str(i) for i in await redis.smembers(prefix + "workers"))
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hgetall(worker_key(prefix, worker_id))
        rows = await pipe.execute()
    found, gone = [], []
    for worker_id, row in zip(ids, rows, strict=True):
        if not row or "address" not in row:
            gone.append(worker_id)  # its lease lapsed
            continue
        try:
            found.append(WorkerInfo(worker_id, row["address"], int(row.get("capacity", 0)),
                                    int(row.get("load", 0)), row.get("draining") == "1"))
        except ValueError:
            log.warning("worker entry unreadable", extra={"worker_id": worker_id})
    if gone:
        await redis.srem(prefix + "workers", *gone)
    return found


class WorkerRegistration:
    """Keep one worker registered in Redis while it runs (`start`, `drain`, `close`).

    `load()` is read at every beat. While Redis cannot be reached the worker keeps serving
    the nodes already connected; its entry comes back with the first beat that gets through.
    """

    def __init__(self, redis_url: str, worker_id: str, address: str, capacity: int,
                 load: Callable[[], int], *, prefix: str = KEY_PREFIX, beat_s: float = BEAT_S,
                 lease_s: float = LEASE_S) -> None:
        self.redis = connect_redis(redis_url)
        self.worker_id = worker_id
        self.address = address
        self.capacity = capacity
        self.load = load
        self.prefix = prefix
        self.beat_s = beat_s
        self.lease_ms = int(lease_s * 1000)
        self.draining = False
        self.registered = False
        self.beats = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return worker_key(self.prefix, self.worker_id)

    async def start(self) -> None:
        """Register now (a failure is logged; the beats keep trying) and keep the lease."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="worker-lease")

    async def beat(self) -> bool:
        fields: dict[RedisValue, RedisValue] = {"address": self.address, "capacity": self.capacity,
                                  "load": self.load(), "draining": int(self.draining),
                                  "beat_ms": int(time.time() * 1000)}
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, mapping=fields)
                pipe.pexpire(self.key, self.lease_ms)
                pipe.sadd(self.prefix + "workers", self.worker_id)
                await asyncio.wait_for(pipe.execute(), self.beat_s)
        except REDIS_ERRORS as exc:
            self.failures += 1
            if self.registered or self.failures == 1:
                log.warning("cannot reach Redis; serving on, retrying",
                            extra={"worker_id": self.worker_id, "error": str(exc)})
            self.registered = False
            return False
        if not self.registered:
            log.info("registered in Redis", extra={"worker_id": self.worker_id,
                                                   "address": self.address})
        self.registered = True
        self.beats += 1
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.beat_s)
            await self.beat()

    async def drain(self) -> None:
        """Say so in Redis: nodes place no new stream here and move theirs away."""
        self.draining = True
        await self.beat()

    async def close(self) -> None:
        """Deregister at once (nodes stop using this worker without waiting for the lease)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*REDIS_ERRORS):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.srem(self.prefix + "workers", self.worker_id)
                await asyncio.wait_for(pipe.execute(), 1.0)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()
