"""`RedisWorkerPool`: the workers an SFU node finds through Redis, and its streams moved
between them without a gap in the audio.

The pool reads the live workers (`denoiser.worker.registry.read_workers`) every `poll_s`:
a worker that appears is connected and takes new streams; one whose lease lapsed is dropped;
one that is draining takes no new streams. Each new stream goes to the usable worker with the
most free slots (its reported capacity minus its reported load, minus what this node placed
on it since that report, and never more than this node's own count allows).

A stream moves at its next request when its worker is no longer usable (the connection
dropped, the lease lapsed, it drains): that request goes, with OPEN, to another worker and
only warms the fresh model state there (the caller gets EngineError at once, so that frame
passes through, counted); the next request is denoised there. Requests already in flight on
a lost connection fail the same way. So a stream whose worker dies passes through for about
one frame and is denoised again from the next. (Sending the old audio again to warm the new
state would queue several requests at once, which the worker runs as one step of an untraced
hop count: a second of delay.) Every decision is counted in `placements`.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import numpy as np

from denoiser.engine import EngineError, EngineFull
from denoiser.worker.client import RemoteEngine
from denoiser.worker.pool import WorkerPool
from denoiser.worker.registry import (
    KEY_PREFIX,
    LEASE_S,
    REDIS_ERRORS,
    WorkerInfo,
    connect_redis,
    read_workers,
)

log = logging.getLogger(__name__)


class RedisWorkerPool(WorkerPool):
    """Workers registered in Redis at `redis_url`, behind one `Engine`."""

    def __init__(self, redis_url: str, node: str | None = None, *, secret: str | None = None,
                 prefix: str = KEY_PREFIX, poll_s: float = 0.5, wait_s: float = 60.0
                 ) -> None:
        super().__init__([], node, secret=secret)
        self.redis = connect_redis(redis_url)
        self.prefix = prefix
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.placements: Counter[str] = Counter()  # placed, moved, no_free_slot, no_worker
        self.redis_errors = 0
        self.info: dict[str, WorkerInfo] = {}  # address -> as last read from Redis
        self._placed_since_read: Counter[str] = Counter()  # address -> streams placed
        self._warming: dict[str, asyncio.Future[np.ndarray]] = {}  # a moved stream's first
        self._task: asyncio.Task[None] | None = None
        self._read_failed = False
        self._back_at = -float("inf")  # when Redis answered again after failing

    # -- finding workers ---------------------------------------------------------------------
    async def start(self) -> None:
        """Wait (up to `wait_s`) for a registered worker that answers, then keep watching."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        last_error = "no worker registered in Redis"
        while self._format is None:
            try:
                await self.refresh()
            except REDIS_ERRORS as exc:
                last_error = f"cannot reach Redis: {exc}"
            for worker in list(self.workers):
                if worker.connected:
                    continue
                try:
                    await worker.start()
                except EngineError as exc:
                    last_error = str(exc)
                    continue
                self._format = worker.welcome
                break
            if self._format is None:
                if loop.time() > deadline:
                    raise EngineError(f"no worker reachable through Redis in {self.wait_s:.0f} "
                                      f"s: {last_error}")
                await asyncio.sleep(self.poll_s)
        for worker in self.workers:
            if not worker.connected:
                worker.welcome = self._format
                worker.reconnect_in_background()
        self._task = asyncio.create_task(self._watch(), name="worker-directory")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except REDIS_ERRORS as exc:
                # Keep the workers we know: their connections say whether they are alive.
                self._read_failed = True
                self.redis_errors += 1
                if self.redis_errors == 1 or self.redis_errors % 60 == 0:
                    log.warning("cannot read workers from Redis; keeping the known ones",
                                extra={"error": str(exc)})

    async def refresh(self) -> None:
        """Read the live workers once; connect the new ones, drop the gone ones."""
        live = {info.address: info for info in await read_workers(self.redis, self.prefix)}
        now = asyncio.get_running_loop().time()
        if self._read_failed:
            self._read_failed, self._back_at = False, now
        self.info = live
        self._placed_since_read.clear()
        known = {w.address: w for w in self.workers}
        for address in live.keys() - known.keys():
            worker = self.add_worker(address)
            log.info("worker found in Redis", extra={"worker": address})
            if self._format is not None:
                worker.welcome = self._format  # what it must match
                worker.reconnect_in_background()
        for address in known.keys() - live.keys():
            worker = known[address]
            if worker.connected and now - self._back_at < LEASE_S:
                continue  # Redis just came back (maybe empty): give it a lease to register
            self.workers.remove(worker)
            log.warning("worker lease gone; moving its streams",
                        extra={"worker": address, "streams": worker.live_streams})
            await worker.close()

    # -- placing streams ---------------------------------------------------------------------
    def usable(self, worker: RemoteEngine) -> bool:
        info = self.info.get(worker.address)
        return worker.connected and worker in self.workers and \
            not (info is not None and info.draining)

    def _free(self, worker: RemoteEngine) -> int:
        info = self.info.get(worker.address)
        if info is None:
            return worker.free_slots
        return min(worker.free_slots, info.free - self._placed_since_read[worker.address])

    def _choose(self, exclude: RemoteEngine | None = None) -> RemoteEngine:
        usable = [w for w in self.workers if w is not exclude and self.usable(w)]
        if not usable:
            self.placements["no_worker"] += 1
            raise EngineError("no usable worker is connected")
        best = max(usable, key=self._free)
        if self._free(best) <= 0:
            self.placements["no_free_slot"] += 1
            raise EngineFull(f"all {len(usable)} usable workers are full")
        return best

    def open_stream(self, stream_id: str) -> None:
        if stream_id in self._placed:
            raise EngineError(f"stream {stream_id!r} is already open")
        best = self._choose()
        best.open_stream(stream_id)
        self._placed[stream_id] = best
        self._placed_since_read[best.address] += 1
        self.placements["placed"] += 1

    def close_stream(self, stream_id: str) -> None:
        self._warming.pop(stream_id, None)
        super().close_stream(stream_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().close()
        self._warming.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        warming = self._warming.pop(stream_id, None)
        if warming is not None and not warming.done():
            await asyncio.wait({warming})  # one request of a stream at a time on a worker
        worker = self._placed.get(stream_id)
        if worker is None:
            raise EngineError(f"unknown stream {stream_id!r}")
        if self.usable(worker):
            return await worker.process(stream_id, samples)
        # Its worker is gone or draining: this request warms the stream up on another one.
        target = self._choose(exclude=worker)
        worker.close_stream(stream_id)
        target.open_stream(stream_id)
        self._placed[stream_id] = target
        self._placed_since_read[target.address] += 1
        self.placements["moved"] += 1
        log.info("stream moved", extra={"stream": stream_id, "from": worker.address,
                                        "to": target.address})
        task = asyncio.ensure_future(target.process(stream_id, samples))
        task.add_done_callback(_retrieve)
        self._warming[stream_id] = task
        raise EngineError(f"stream {stream_id!r} moved from {worker.address} to "
                          f"{target.address}; this frame warms it up there")


def _retrieve(task: asyncio.Future[np.ndarray]) -> None:
    if not task.cancelled():
        task.exception()  # a warm-up that failed has nobody to tell
