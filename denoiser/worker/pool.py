"""`WorkerPool`: an SFU node's engine spread over several workers.

Each new stream goes to the connected worker with the most free slots (as this node counts
them; a worker full with other nodes' streams answers FULL, and the stream passes through until
it asks again). A worker is lost when its connection ends or when it has been silent past its
heartbeat timeout (`RemoteEngine`: a frozen machine whose socket never closes). A stream whose
worker is lost fails with an "unknown stream" error, which makes
the SFU's stream open again after a few hops: it is then placed on a worker still connected,
and passes through (counted) meanwhile. Every worker must run the same audio format and latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

import numpy as np

from denoiser.engine import Engine, EngineError, EngineFull, UnknownStream
from denoiser.worker import protocol as wire
from denoiser.worker.client import RemoteEngine
from denoiser.worker.spawn import SpawnedWorker, spawn_worker

log = logging.getLogger(__name__)


class WorkerPool(Engine):
    """The workers at `addresses`, behind one `Engine`."""

    def __init__(self, addresses: Sequence[str], node: str | None = None, *,
                 connect_timeout: float = 5.0, max_backoff: float = 2.0,
                 secret: str | None = None, heartbeat_timeout: float | None = None) -> None:
        self.node = node
        self._options = {"connect_timeout": connect_timeout, "max_backoff": max_backoff,
                         "secret": secret, "heartbeat_timeout": heartbeat_timeout}
        self.workers: list[RemoteEngine] = []
        for address in dict.fromkeys(addresses):
            self.add_worker(address)
        self._placed: dict[str, RemoteEngine] = {}
        self._format: wire.Welcome | None = None

    def add_worker(self, address: str) -> RemoteEngine:
        """Add a worker before `start` (its address known only then, say)."""
        worker = RemoteEngine(address, self.node, **self._options)  # type: ignore[arg-type]
        self.workers.append(worker)
        return worker

    def _welcome(self) -> wire.Welcome:
        if self._format is None:
            raise EngineError("no worker has been reached yet")
        return self._format

    @property
    def sample_rate(self) -> int:  # type: ignore[override]
        return self._welcome().sample_rate

    @property
    def hop_size(self) -> int:  # type: ignore[override]
        return self._welcome().hop_size

    @property
    def latency_samples(self) -> int:  # type: ignore[override]
        return self._welcome().latency_samples

    @property
    def live_streams(self) -> int:
        return len(self._placed)

    async def start(self) -> None:
        """Connect to every worker; EngineError unless at least one answers. The others keep
        being tried in the background, and must then match the first one's format."""
        if not self.workers:
            raise EngineError("a worker pool needs at least one worker address")
        results = await asyncio.gather(*(w.start() for w in self.workers), return_exceptions=True)
        reached = [w for w, r in zip(self.workers, results, strict=True) if r is None]
        if not reached:
            raise EngineError("no worker could be reached: " + "; ".join(
                str(r) for r in results if isinstance(r, BaseException)))
        self._format = reached[0].welcome
        for worker, result in zip(self.workers, results, strict=True):
            if worker in reached and not _same_format(worker.welcome, self._format):
                await worker.close()
                raise EngineError(f"worker {worker.address} runs {worker.welcome}, but "
                                  f"{reached[0].address} runs {self._format}; all workers of "
                                  "a node must run the same model")
            if result is not None:
                log.warning("worker unreachable at start; retrying in the background",
                            extra={"worker": worker.address, "error": str(result)})
                worker.welcome = self._format  # what it must match once it answers
                worker.reconnect_in_background()

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers))
        self._placed.clear()

    def open_stream(self, stream_id: str) -> None:
        if stream_id in self._placed:
            raise EngineError(f"stream {stream_id!r} is already open")
        connected = [w for w in self.workers if w.connected]
        if not connected:
            raise EngineError("no worker is connected")
        best = max(connected, key=lambda w: w.free_slots)
        if best.free_slots <= 0:
            raise EngineFull(f"all {len(connected)} connected workers are full")
        best.open_stream(stream_id)
        self._placed[stream_id] = best

    def close_stream(self, stream_id: str) -> None:
        worker = self._placed.pop(stream_id, None)
        if worker is not None:
            worker.close_stream(stream_id)

    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        worker = self._placed.get(stream_id)
        if worker is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        if not worker.connected and any(w.connected for w in self.workers):
            # Its worker is gone: forget the placement; the stream opens again elsewhere.
            self.close_stream(stream_id)
            raise UnknownStream(f"unknown stream {stream_id!r}: its worker {worker.address} "
                              "is not connected")
        return await worker.process(stream_id, samples)


def _same_format(a: wire.Welcome | None, b: wire.Welcome | None) -> bool:
    return a is not None and b is not None and \
        (a.sample_rate, a.hop_size, a.latency_samples) == \
        (b.sample_rate, b.hop_size, b.latency_samples)


class ChildWorkerPool(WorkerPool):
    """A pool of one `denoise-sfu worker` that this process starts on loopback at `start` and
    stops at `close`: the engine in a process (and a GIL) of its own on a single machine.

    The child gets `flags` and, through its environment, the secret; its logs go to this
    process's stderr; Linux stops it if this process dies (`spawn_worker`). `start` blocks
    while the child loads the model: call it from the main thread, at start-up."""

    def __init__(self, flags: Sequence[str], node: str | None = None,
                 secret: str | None = None) -> None:
        super().__init__([], node, secret=secret)
        self.flags = list(flags)
        self.secret = secret
        self.child: SpawnedWorker | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        if self.secret:
            env["DENOISE_SFU_SECRET"] = self.secret
        try:
            self.child = spawn_worker(self.flags, env=env, stderr=None)
        except RuntimeError as exc:
            raise EngineError(str(exc)) from exc
        log.info("started a worker process", extra={"pid": self.child.proc.pid,
                                                    "worker": self.child.address})
        self.add_worker(self.child.address)
        await super().start()

    async def close(self) -> None:
        await super().close()
        if self.child is not None:
            await asyncio.to_thread(self.child.stop)
