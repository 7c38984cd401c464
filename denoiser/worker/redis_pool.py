"""`RedisWorkerPool`: the workers an SFU node finds through Redis, and its streams moved
between them without a gap in the audio.

The pool reads the live workers (`denoiser.worker.registry.read_workers`) every `poll_s`:
a worker that appears is connected and takes new streams; one whose lease lapsed is dropped;
one that is draining takes no new streams. Each new stream goes to the usable worker with the
most free slots (its reported capacity minus its reported load, minus what this node placed
on it since that report, and never more than this node's own count allows).

A stream moves at its next request when its worker is no longer usable (the connection
dropped, the lease lapsed, it drains): the request goes, with OPEN, to another worker,
prefixed with the stream's last `warm_hops` of input so the new worker's model state is warm
and its output carries on. Only requests already in flight on a lost connection fail (the SFU
passes those hops through, counted). Every decision is counted in `placements`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque

import numpy as np

from denoiser.engine import EngineError, EngineFull
from denoiser.worker.client import RemoteEngine
from denoiser.worker.pool import WorkerPool
from denoiser.worker.registry import (
    KEY_PREFIX,
    REDIS_ERRORS,
    WorkerInfo,
    connect_redis,
    read_workers,
)

log = logging.getLogger(__name__)


class RedisWorkerPool(WorkerPool):
    """Workers registered in Redis at `redis_url`, behind one `Engine`."""

    def __init__(self, redis_url: str, node: str | None = None, *, secret: str | None = None,
                 prefix: str = KEY_PREFIX, poll_s: float = 0.5, wait_s: float = 60.0,
                 warm_hops: int = 8) -> None:
        super().__init__([], node, secret=secret)
        self.redis = connect_redis(redis_url)
        self.prefix = prefix
        self.poll_s = poll_s
        self.wait_s = wait_s
        self.warm_hops = warm_hops
        self.placements: Counter[str] = Counter()  # placed, moved, no_free_slot, no_worker
        self.redis_errors = 0
        self.info: dict[str, WorkerInfo] = {}  # address -> as last read from Redis
        self._placed_since_read: Counter[str] = Counter()  # address -> streams placed
        self._history: dict[str, deque[np.ndarray]] = {}
        self._task: asyncio.Task[None] | None = None

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
                self.redis_errors += 1
                if self.redis_errors == 1 or self.redis_errors % 60 == 0:
                    log.warning("cannot read workers from Redis; keeping the known ones",
                                extra={"error": str(exc)})

    async def refresh(self) -> None:
        """Read the live workers once; connect the new ones, drop the gone ones."""
        live = {info.address: info for info in await read_workers(self.redis, self.prefix)}
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
        self._history[stream_id] = deque()
        self.placements["placed"] += 1

    def close_stream(self, stream_id: str) -> None:
        self._history.pop(stream_id, None)
        super().close_stream(stream_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().close()
        self._history.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        worker = self._placed.get(stream_id)
        if worker is None:
            raise EngineError(f"unknown stream {stream_id!r}")
        history = self._history.setdefault(stream_id, deque())
        if self.usable(worker):
            self._remember(history, samples)
            return await worker.process(stream_id, samples)
        # Its worker is gone or draining: this request goes to another one, warmed up.
        target = self._choose(exclude=worker)
        worker.close_stream(stream_id)
        target.open_stream(stream_id)
        self._placed[stream_id] = target
        self._placed_since_read[target.address] += 1
        self.placements["moved"] += 1
        log.info("stream moved", extra={"stream": stream_id, "from": worker.address,
                                        "to": target.address, "warm_hops": len(history)})
        warm = np.concatenate([*history, samples]) if history else samples
        self._remember(history, samples)
        out = await target.process(stream_id, warm)
        return out[-samples.size:]

    def _remember(self, history: deque[np.ndarray], samples: np.ndarray) -> None:
        if self.warm_hops <= 0 or not isinstance(samples, np.ndarray):
            return
        history.append(samples)
        limit = self.warm_hops * self.hop_size
        total = sum(h.size for h in history)
        while history and total - history[0].size >= limit:
            total -= history.popleft().size
