"""The in-process batching engine: one batched `model.step` per tick over every stream that is due.

(Over 400 lines on purpose: the per-request path and the bulk `submit_block` path of the worker
share one tick loop and one set of queues, and are easier to keep consistent side by side. The
device side is in `runner.py`, admission in `capacity.py`, bookkeeping in `pending.py`.)

The engine keeps a state table on the device, one row (slot) per live stream, plus slot 0, a
scratch row that padded batch entries read and write so that real slots are never touched by
padding. The table grows by doubling up to `max_streams`.

A tick closes when every live stream has a hop waiting, or `tick_deadline` seconds after the
first hop of the tick arrived, whichever comes first. It runs every hop waiting then (up to
`MAX_ROUNDS_PER_TICK` per stream) as back-to-back rounds, each one batched gather ->
`model.step` -> scatter over the streams that still have a hop, in a single worker thread so
the event loop never blocks. Consecutive rounds over exactly the same streams (the common case:
every stream sent a 20 ms codec frame, two hops) run as one call, gather ->
`model.step_many` over their T hops -> scatter, which costs less than T calls (`multi_hop`, on
by default on CPU).
Only that thread touches the table; the event loop keeps the bookkeeping (slots, queues, resets)
and hands each tick a snapshot of what it needs. On CPU the state a call returns is held rather
than scattered while the next call runs the same slots (a steady load), see `_run_cpu`, and a
model that declares itself `traceable` runs as a TorchScript graph per hop count
(`denoiser.model.traced`): the worker thread then takes the GIL back a few times per call instead
of after every tensor operation, which matters as soon as the event loop is busy.

On CUDA the tick uses pinned, preallocated host buffers, optional float16, and one CUDA graph per
batch bucket (the batch is padded up to the bucket with the scratch slot). The same code runs on
CPU, where padding can be switched on to exercise it (`pad_to_bucket=True`) but graphs cannot.
Graphs are captured for one hop per call, so on CUDA rounds always run one hop each (a graph
replay already removes the per-operation cost that `step_many` saves on CPU).

`half=True` puts the model's *parameters* in float16; its buffers, the state table and the audio
stay float32. The model casts its network's activations to its weights' dtype (DFN3 does) and
keeps its signal processing (STFT, ERB bands, feature norms) in float32. A state table in
float16 would not do: DFN3's past spectra sit near float16's subnormal range, and storing them so
costs ~20 dB of accuracy (measured on CPU: 27 dB output SNR against float32, 46 dB with only
the weights in float16).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from denoiser.engine import Engine, EngineError, EngineFull, UnknownStream, validate_hops
from denoiser.engine.blocks import Block, BlockCall, answer_call, merge_blocks
from denoiser.engine.capacity import Admission, default_buckets, resolve_device
from denoiser.engine.pending import Pending, Request, StreamQueue
from denoiser.engine.runner import DeviceRunner
from denoiser.engine.stats import EngineStats
from denoiser.model.streaming import StreamingModel
from denoiser.model.traced import TracedSteps

log = logging.getLogger(__name__)

MAX_ROUNDS_PER_TICK = 6  # hops of one stream run in one tick: a 60 ms codec frame


class LocalEngine(Engine):
    """Batched streaming inference in this process (see the module docstring)."""

    def __init__(self, model: StreamingModel, device: str | torch.device = "auto",
                 max_streams: int = 256, tick_deadline: float = 0.004, *,
                 initial_slots: int = 8, max_pending_hops: int = 200, half: bool = False,
                 cuda_graphs: bool = True, pad_to_bucket: bool | None = None,
                 buckets: Sequence[int] | None = None, threads: int | None = None,
                 multi_hop: bool | None = None, trace: bool | None = None,
                 admission: Admission | None = None) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        if tick_deadline < 0:
            raise ValueError("tick_deadline must be >= 0")
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        if half and not self.cuda:
            raise ValueError("half precision is only supported on CUDA")
        self.half = bool(half)
        self.dtype = torch.float32  # the state table and the audio, also with `half`
        self.weight_dtype = torch.float16 if half else torch.float32
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.hop_size = int(model.hop_size)
        self.latency_samples = int(model.latency_samples)
        self.max_streams = int(max_streams)
        self.tick_deadline = float(tick_deadline)
        self.max_pending_hops = int(max_pending_hops)
        self.buckets = tuple(sorted(buckets)) if buckets else default_buckets(self.max_streams)
        if self.buckets[-1] < self.max_streams:
            raise ValueError("the largest bucket must hold max_streams")
        self.pad_to_bucket = self.cuda if pad_to_bucket is None else bool(pad_to_bucket)
        if multi_hop and self.cuda:
            raise ValueError("multi-hop calls run on CPU only (CUDA graphs are one hop per call)")
        self.multi_hop = (not self.cuda) if multi_hop is None else bool(multi_hop)
        if trace and self.cuda:
            raise ValueError("traced steps run on CPU only (CUDA replays graphs)")
        # Traced by default on CPU where the model allows it (`StreamingModel.traceable`).
        self.trace = (not self.cuda and model.traceable) if trace is None else bool(trace)
        self.threads = threads
        self.stats = EngineStats()
        # Streams admitted from the batched tick cost, re-measured every tick (None: up to
        # max_streams); `_shed`: admitted streams passed through while the ticks run late.
        self.admission = admission
        self._shed: set[str] = set()

        # Event-loop bookkeeping.
        self._capacity = min(max(1, initial_slots), self.max_streams)
        self._free: list[int] = list(range(1, self._capacity + 1))
        self._streams: dict[str, StreamQueue] = {}
        self._waiting: dict[str, StreamQueue] = {}  # live streams with at least one hop queued
        self._blocks: list[Block] = []  # `submit_block` arrays waiting for the next tick
        self._block_rows = 0
        self._resets: set[int] = set()
        self._closing: list[int] = []
        self._deferred_free: list[int] = []  # closed while a waiting block may name them
        self._in_flight = False
        self._started = False
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

        # Device side: only the engine's worker thread touches it.
        self.runner = DeviceRunner(
            model, self.device, half=self.half, hop_size=self.hop_size, buckets=self.buckets,
            pad_to_bucket=self.pad_to_bucket, use_graphs=bool(cuda_graphs) and self.cuda,
            multi_hop=self.multi_hop, trace=self.trace, threads=threads,
            initial_capacity=self._capacity)

    @property
    def steps(self) -> TracedSteps | None:
        """The traced steps the worker thread runs (None: eager, or not started)."""
        return self.runner.steps

    @property
    def use_graphs(self) -> bool:
        return self.runner.use_graphs

    @property
    def graph_error(self) -> str | None:
        """Why CUDA graphs were given up, if they were."""
        return self.runner.graph_error

    @property
    def compiles(self) -> dict[str, int]:
        """Graphs traced or captured: at start, and while serving (each of those stalled a
        tick; `start` warms every shape a tick can ask for, so this stays 0)."""
        late = self.runner.late_compiles
        return {"start": self.runner.compiles - late, "serving": late}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.runner.prepare)
        self._wake = asyncio.Event()
        self._started = True
        self._task = asyncio.create_task(self._tick_loop(), name="engine-ticks")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for stream in self._streams.values():
            self._fail_queue(stream, "engine closed")
        self._streams.clear()
        self._waiting.clear()
        for block in self._blocks:
            if not block.future.done():
                block.future.set_exception(EngineError("engine closed"))
        self._blocks.clear()
        self._block_rows = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> LocalEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- streams ---------------------------------------------------------------------------

    @property
    def live_streams(self) -> int:
        return len(self._streams)

    @property
    def _ready(self) -> int:
        """Live streams with hops waiting (block rows counted as one stream each)."""
        return len(self._waiting) + self._block_rows

    def slot_of(self, stream_id: str) -> int:
        """The table slot of an open stream (what `submit_block` takes)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return stream.slot

    @property
    def capacity(self) -> int:
        """Slots currently allocated in the state table (grows by doubling)."""
        return self._capacity

    def open_stream(self, stream_id: str) -> None:
        if self._closed:
            raise EngineError("engine closed")
        if stream_id in self._streams:
            raise EngineError(f"stream {stream_id!r} is already open")
        if self.admission is not None and \
                len(self._streams) - len(self._shed) >= self.admission.limit:
            self.stats.errors["admission"] += 1
            raise EngineFull(f"the engine keeps {self.admission.limit} streams in real time "
                             "now (measured)")
        if not self._free:
            if self._capacity >= self.max_streams:
                raise EngineFull(f"all {self.max_streams} stream slots are in use")
            new_capacity = min(2 * self._capacity, self.max_streams)
            for slot in range(self._capacity + 1, new_capacity + 1):
                heapq.heappush(self._free, slot)
            self._capacity = new_capacity
        slot = heapq.heappop(self._free)
        self._resets.add(slot)
        self._streams[stream_id] = StreamQueue(slot=slot)

    def close_stream(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._shed.discard(stream_id)
        self._waiting.pop(stream_id, None)
        self._fail_queue(stream, f"stream {stream_id!r} closed")
        if self._wake is not None and self._ready and self._ready >= len(self._streams):
            self._wake.set()  # the others no longer wait for this one
        if self._in_flight:
            self._closing.append(stream.slot)  # the running tick may still scatter into it
        elif self._blocks:
            self._deferred_free.append(stream.slot)  # a waiting block may still name it
        else:
            heapq.heappush(self._free, stream.slot)

    def _fail_queue(self, stream: StreamQueue, reason: str) -> None:
        while stream.queue:
            stream.queue.popleft().request.fail(EngineError(reason))

    # -- requests --------------------------------------------------------------------------

    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        return await self.submit(stream_id, samples)

    def submit(self, stream_id: str, samples: np.ndarray) -> asyncio.Future[np.ndarray]:
        """`process` without the coroutine: queue the hops now (EngineError at once if they
        cannot be) and return the future of their output. The worker service queues a whole
        TICK of entries this way, in order, with no task per entry."""
        if self._closed:
            raise EngineError("engine closed")
        if not self._started or self._wake is None:
            raise EngineError("engine not started")
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        if stream_id in self._shed:
            self.stats.errors["shed"] += 1
            raise EngineFull(f"stream {stream_id!r} is shed: the engine's ticks run late")
        try:
            samples = validate_hops(samples, self.hop_size)
        except EngineError:
            self.stats.errors["bad_input"] += 1
            raise
        hops = samples.size // self.hop_size
        if len(stream.queue) + hops > self.max_pending_hops:
            self.stats.errors["backlog"] += 1
            raise EngineError(f"stream {stream_id!r} has {len(stream.queue)} hops waiting; "
                              f"limit {self.max_pending_hops}")
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = Request(loop.create_future(), [None] * hops, hops)
        was_idle = not stream.queue
        owned = samples.reshape(hops, self.hop_size).copy()  # the caller may reuse its buffer
        for i in range(hops):
            stream.queue.append(Pending(owned[i], request, i, now))
        if was_idle:
            self._waiting[stream_id] = stream
            # Wake the loop only to start a tick's deadline or to close a full tick.
            if self._ready == 1 or self._ready >= len(self._streams):
                self._wake.set()
        return request.future

    def submit_block(self, slots: np.ndarray, hops: np.ndarray) -> asyncio.Future[np.ndarray]:
        """The bulk path (the worker's): the hops [B, T*hop] of B open streams at `slots`
        (`slot_of`; distinct), answered by one future of [B, T*hop] for the next tick. The
        caller has checked that the rows are finite; `hops` is the engine's from now on.
        Rows whose output is not finite come back as they are, and their slots are reset."""
        if self._closed:
            raise EngineError("engine closed")
        if not self._started or self._wake is None:
            raise EngineError("engine not started")
        slots = np.asarray(slots, dtype=np.int64)
        if hops.dtype != np.float32 or hops.ndim != 2 or hops.shape[0] != slots.size \
                or not hops.shape[1] or hops.shape[1] % self.hop_size \
                or hops.shape[1] > MAX_ROUNDS_PER_TICK * self.hop_size:
            raise EngineError(f"a block is float32 [{slots.size}, T*{self.hop_size}] with "
                              f"1 <= T <= {MAX_ROUNDS_PER_TICK}, got {hops.dtype} {hops.shape}")
        if slots.size and (slots.min() < 1 or slots.max() > self._capacity):
            raise EngineError(f"block slots must lie in 1..{self._capacity}")
        if self._block_rows + slots.size > MAX_ROUNDS_PER_TICK * self.max_streams:
            self.stats.errors["backlog"] += 1
            raise EngineError(f"{self._block_rows} block rows waiting; limit "
                              f"{MAX_ROUNDS_PER_TICK * self.max_streams}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not slots.size:
            future.set_result(hops)
            return future
        was = self._ready
        self._blocks.append(Block(slots, hops, future, loop.time()))
        self._block_rows += slots.size
        if was == 0 or self._ready >= len(self._streams):
            self._wake.set()
        return future

    def _first_arrival(self) -> float:
        times = [s.queue[0].arrived for s in self._waiting.values()]
        times += [b.arrived for b in self._blocks[:1]]
        return min(times)

    # -- the tick loop (event loop side) ---------------------------------------------------

    async def _tick_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._ready:
                continue
            first = self._first_arrival()
            deadline = first + self.tick_deadline
            while self._ready < len(self._streams):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            try:
                await self._tick(loop)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad tick stop the engine
                log.exception("engine tick failed")
                self.stats.errors["tick"] += 1
            if self._ready:
                self._wake.set()

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A stream that sent several hops at once (a 20 ms codec frame is two) gets them all run
        # in this tick, in back-to-back rounds of one hop per stream each: one trip to the
        # worker thread and no second wait for the tick to fill. Consecutive rounds over the
        # same slots become one call of T hops.
        # Streams in slot order, the same every tick under a steady load (see `_run_cpu`).
        waiting = sorted(self._waiting.items(), key=lambda item: item[1].slot)
        rounds: list[list[tuple[str, int, Pending]]] = []
        while len(rounds) < MAX_ROUNDS_PER_TICK:
            batch = [(sid, s.slot, s.queue.popleft()) for sid, s in waiting if s.queue]
            if not batch:
                break
            rounds.append(batch)
        for sid, s in waiting:
            if not s.queue:
                del self._waiting[sid]
        blocks, self._blocks = self._blocks, []
        self._block_rows = 0
        if not rounds and not blocks:
            return
        self._closing.extend(self._deferred_free)  # freed once this tick has run
        self._deferred_free.clear()
        closed_at = loop.time()
        first = min([p.arrived for _, _, p in rounds[0]] if rounds else [],
                    default=blocks[0].arrived if blocks else closed_at)
        if blocks:
            first = min(first, blocks[0].arrived)
        calls = self._group_rounds(rounds)
        block_calls = merge_blocks(blocks, self._capacity) if blocks else []
        work: list[tuple[list[int] | np.ndarray, np.ndarray]] = [
            (slots, self._stack_hops(group)) for slots, group in calls]
        work += [(call.slots, call.hops) for call in block_calls]
        resets = sorted(self._resets)
        self._resets.clear()
        self._in_flight = True
        start = time.perf_counter()
        try:
            outs = await loop.run_in_executor(self._executor, self.runner.run_tick, work, resets,
                                              self._capacity)
        except Exception as exc:
            log.warning("engine forward failed for %d calls: %s", len(work), exc)
            self.stats.errors["forward"] += 1
            for batch in rounds:
                for sid, slot, pending in batch:
                    if sid in self._streams:
                        self._resets.add(slot)  # its state is unknown now
                    pending.request.fail(EngineError(f"forward failed: {exc}"))
            for block in blocks:
                self._resets.update(block.slots.tolist())
                if not block.future.done():
                    block.future.set_exception(EngineError(f"forward failed: {exc}"))
            return
        finally:
            self._in_flight = False
            for slot in self._closing:
                heapq.heappush(self._free, slot)
            self._closing.clear()
        forward_ms = (time.perf_counter() - start) * 1e3
        for (_, group), out in zip(calls, outs[:len(calls)], strict=True):
            self.stats.hops_per_call[len(group)] += 1
            for k, batch in enumerate(group):
                self._answer(batch, out[:, k * self.hop_size:(k + 1) * self.hop_size])
                self.stats.hops += len(batch)
                self.stats.batch_sizes[len(batch)] += 1
        for call, out in zip(block_calls, outs[len(calls):], strict=True):
            self._answer_blocks(call, out)
        if self.admission is not None:
            streams = (len(rounds[0]) if rounds else 0) + sum(b.rows for b in blocks)
            hops = sum(len(batch) for batch in rounds) + sum(
                b.hops.size // self.hop_size for b in blocks)
            self.admission.observe(streams, hops / max(streams, 1), forward_ms)
            self._admit()
        now = loop.time()
        self.stats.ticks += 1
        self.stats.wait_ms.add((closed_at - first) * 1e3)
        self.stats.forward_ms.add(forward_ms)
        self.stats.tick_ms.add((now - first) * 1e3)

    def _admit(self) -> None:
        """Shed the newest streams beyond the admission limit; let shed ones back in when
        there is room again (oldest first)."""
        assert self.admission is not None
        limit = self.admission.limit
        active = len(self._streams) - len(self._shed)
        if active > limit:
            for sid in reversed(list(self._streams)):
                if active <= limit:
                    break
                if sid not in self._shed:
                    self._shed.add(sid)
                    active -= 1
        elif self._shed and active < limit:
            for sid in list(self._streams):
                if active >= limit or not self._shed:
                    break
                if sid in self._shed:
                    self._shed.discard(sid)
                    active += 1

    @property
    def shed_streams(self) -> int:
        return len(self._shed)

    def _group_rounds(self, rounds: list[list[tuple[str, int, Pending]]]
                      ) -> list[tuple[list[int], list[list[tuple[str, int, Pending]]]]]:
        """(slots, rounds) per model call: consecutive rounds over the same slots (in the same
        order: rounds list the streams in one fixed order) share a call when `multi_hop`."""
        calls: list[tuple[list[int], list[list[tuple[str, int, Pending]]]]] = []
        for batch in rounds:
            slots = [slot for _, slot, _ in batch]
            if self.multi_hop and calls and calls[-1][0] == slots:
                calls[-1][1].append(batch)
            else:
                calls.append((slots, [batch]))
        return calls

    @staticmethod
    def _stack_hops(group: list[list[tuple[str, int, Pending]]]) -> np.ndarray:
        """The hops of T rounds over the same streams as [B, T*hop] (each row one stream's
        hops in order)."""
        if len(group) == 1:
            return np.stack([p.hop for _, _, p in group[0]])
        per_round = np.stack([np.stack([p.hop for _, _, p in batch]) for batch in group], axis=1)
        return per_round.reshape(per_round.shape[0], -1)

    def _answer_blocks(self, call: BlockCall, out: np.ndarray) -> None:
        rows, width = out.shape
        hops = width // self.hop_size
        self.stats.hops_per_call[hops] += 1
        self.stats.hops += rows * hops
        self.stats.batch_sizes[rows] += hops
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            bad = call.slots[~finite]
            self.stats.errors["non_finite_output"] += int(bad.size)
            self._resets.update(int(slot) for slot in bad if slot in self._live_slots())
        answer_call(call, out)

    def _live_slots(self) -> set[int]:
        return {s.slot for s in self._streams.values()}

    def _answer(self, batch: list[tuple[str, int, Pending]], out: np.ndarray) -> None:
        finite = np.isfinite(out).all(axis=1)
        for row, (sid, slot, pending) in enumerate(batch):
            if not finite[row]:
                self.stats.errors["non_finite_output"] += 1
                if sid in self._streams:
                    self._resets.add(slot)
                pending.request.fail(
                    EngineError(f"model produced non-finite output for {sid!r}; state reset"))
            else:
                pending.request.answer(pending.index, out[row])

