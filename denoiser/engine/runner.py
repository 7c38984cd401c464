"""The engine's device side: the state table and the batched steps, in the engine's one thread.

Only the engine's worker thread touches a `DeviceRunner`: the event loop hands each tick a
snapshot of the work (slot lists and hops) and the slots to reset, and gets the outputs back.
The table holds one row (slot) per live stream plus slot 0, a scratch row that padded batch
entries read and write so that real slots are never touched by padding. See
`denoiser.engine.local` for the scheduling and the CPU/CUDA details.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from denoiser.engine import EngineError
from denoiser.model.streaming import State, StreamingModel
from denoiser.model.traced import WARM_HOP_COUNTS, TracedSteps

log = logging.getLogger(__name__)

SCRATCH_SLOT = 0


def _as_tensor(hops: np.ndarray) -> Tensor:
    """The hops as a tensor without a copy, also when they are a read-only view of a worker
    message (the model only reads its input; torch warns about such arrays)."""
    if hops.flags.writeable:
        return torch.from_numpy(hops)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(hops)


class DeviceRunner:
    """The state table and the batched gather -> step -> scatter, on CPU or CUDA."""

    def __init__(self, model: StreamingModel, device: torch.device, *, half: bool,
                 hop_size: int, buckets: Sequence[int], pad_to_bucket: bool, use_graphs: bool,
                 multi_hop: bool, trace: bool, threads: int | None,
                 initial_capacity: int) -> None:
        self.model = model
        self.device = device
        self.cuda = device.type == "cuda"
        self.half = half
        self.dtype = torch.float32  # the state table and the audio, also with `half`
        self.hop_size = hop_size
        self.buckets = tuple(buckets)
        self.pad_to_bucket = pad_to_bucket
        self.use_graphs = use_graphs
        self.multi_hop = multi_hop
        self.trace = trace
        self.threads = threads
        self.initial_capacity = initial_capacity
        self.steps: TracedSteps | None = None  # set in `prepare` when `trace`
        self._table: State = {}
        self._table_slots = 0
        self._init_row: State = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.graph_error: str | None = None  # why graphs were given up, if they were
        self.started = False  # set at the end of `prepare`: later compiles are counted
        self.late_captures = 0  # CUDA graphs captured after start (a live tick waited)
        self.captures = 0
        self._traced_at_start = 0
        self._io: dict[str, Tensor] = {}
        # CPU: the state the last call returned, not yet scattered into the table, and the
        # padded slot list it belongs to (see `_run_cpu`).
        self._held: tuple[np.ndarray, State] | None = None

    @property
    def graphs(self) -> dict[int, tuple[torch.cuda.CUDAGraph, Tensor]]:
        """The CUDA graphs captured so far, by batch bucket."""
        return self._graphs

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """Make the engine's GPU current in the worker thread (streams, graphs, kernels)."""
        return torch.cuda.device(self.device) if self.cuda else contextlib.nullcontext()

    def prepare(self) -> None:
        if self.threads is not None:
            # OpenMP's thread count is per calling thread: set it where the forwards run too.
            torch.set_num_threads(self.threads)
        with self._on_device():
            self._prepare_on_device()

    def _prepare_on_device(self) -> None:
        # Outside inference mode: parameters moved or cast inside it would become inference
        # tensors, and the model's caches key on their version counters.
        with torch.no_grad():
            self.model.to(device=self.device, dtype=torch.float32).eval()
            if self.half:
                self.model.half()  # (through `_apply`, so RNN weights are re-flattened)
                for module in self.model.modules():
                    for name, buf in module._buffers.items():
                        if buf is not None and buf.is_floating_point():
                            module._buffers[name] = buf.float()
        with torch.inference_mode():
            self._init_row = self.model.initial_state(1, self.device, self.dtype)
            self._ensure_table(self.initial_capacity)
            if self.trace:
                # Every hop count a tick can ask for is one of these or made of them.
                self.steps = TracedSteps(self.model, self.device, self.dtype)
                self.steps.prepare(*(WARM_HOP_COUNTS if self.multi_hop else (1,)))
                self.steps.seal()
            if self.cuda:
                top = self.buckets[-1]
                self._io = {
                    "in_host": torch.zeros(top, self.hop_size, pin_memory=True),
                    "idx_host": torch.zeros(top, dtype=torch.long, pin_memory=True),
                    "out_host": torch.zeros(top, self.hop_size, pin_memory=True),
                    "in_dev": torch.zeros(top, self.hop_size, device=self.device,
                                          dtype=self.dtype),
                    "idx_dev": torch.zeros(top, dtype=torch.long, device=self.device),
                }
                if self.use_graphs:
                    # The table at its largest now (growing it drops every graph), and one
                    # graph per batch bucket: no live tick ever waits for a capture.
                    self._ensure_table(top)
                    for bucket in self.buckets:
                        if self.use_graphs:
                            self._graph_for(bucket)
        self._traced_at_start = self.steps.compiles if self.steps else 0
        self.started = True

    @property
    def late_compiles(self) -> int:
        """Graphs traced or captured after start (each one stalled a live tick)."""
        traced = self.steps.compiles - self._traced_at_start if self.steps else 0
        return self.late_captures + traced

    @property
    def compiles(self) -> int:
        return self.captures + (self.steps.compiles if self.steps else 0)

    def _ensure_table(self, capacity: int) -> None:
        """Grow the table to `capacity` real slots (+ the scratch slot), keeping existing rows."""
        if capacity <= self._table_slots:
            return
        fresh = self.model.initial_state(capacity + 1, self.device, self.dtype)
        for name, old in self._table.items():
            fresh[name][: old.shape[0]].copy_(old)
        self._table = fresh
        self._table_slots = capacity
        self._graphs.clear()  # graphs captured the old tensors' addresses

    def _bucket(self, batch: int) -> int:
        if not self.pad_to_bucket:
            return batch
        for b in self.buckets:
            if b >= batch:
                return b
        raise EngineError(f"batch {batch} exceeds the largest bucket {self.buckets[-1]}")

    def _step_into(self, hops: Tensor, idx: Tensor) -> Tensor:
        """Gather the slots' state, run the hops [B, T*hop] (`step_many` is `step` for T = 1),
        scatter the new state back; returns output."""
        state = {name: t.index_select(0, idx) for name, t in self._table.items()}
        out, new_state = self.model.step_many(hops, state)
        for name, t in self._table.items():
            t.index_copy_(0, idx, new_state[name].to(t.dtype))
        return out

    def run_tick(self, work: list[tuple[list[int] | np.ndarray, np.ndarray]], resets: list[int],
                  capacity: int) -> list[np.ndarray]:
        """Each call is one batched step: (slots, hops[B, T*hop]) -> output[B, T*hop]."""
        with self._on_device(), torch.inference_mode():
            if resets or capacity > self._table_slots:
                self._write_back()
            self._ensure_table(capacity)
            if resets:  # one copy per state tensor, not per slot (a burst of opens on CUDA)
                idx = torch.tensor(resets, dtype=torch.long, device=self.device)
                for name, t in self._table.items():
                    row = self._init_row[name]
                    t.index_copy_(0, idx, row.expand(len(resets), *row.shape[1:]).contiguous())
            run = self._run_cuda if self.cuda else self._run_cpu
            return [run(slots, hops) for slots, hops in work]

    def _run_cpu(self, slots: list[int] | np.ndarray, hops: np.ndarray) -> np.ndarray:
        """One call on CPU. The new state stays held, not scattered: when the next call runs
        the same slots (a steady load: every tick the same streams), it starts from the held
        state, and neither the scatter nor the next gather happens. Anything else that reads
        or writes the table (another slot list, resets, growth) writes the held state back
        first. After a failed call nothing is held and those slots' rows are stale; the tick's
        failure handling resets them."""
        batch = len(slots)
        bucket = self._bucket(batch)
        padded = np.asarray(slots, dtype=np.int64)
        if bucket > batch:
            padded = np.concatenate([padded, np.full(bucket - batch, SCRATCH_SLOT, np.int64)])
        x = _as_tensor(hops)
        if bucket > batch:
            x = torch.cat([x, x.new_zeros(bucket - batch, x.shape[1])])
        held, self._held = self._held, None
        if held is not None and held[0].shape == padded.shape \
                and np.array_equal(held[0], padded):
            state = held[1]
        else:
            if held is not None:
                self._scatter(held[0], held[1])
            idx = torch.from_numpy(padded)
            state = {name: t.index_select(0, idx) for name, t in self._table.items()}
        step = self.steps if self.steps is not None else self.model.step_many
        out, new_state = step(x, state)
        self._held = (padded, new_state)
        # No copy: a model returns new tensors (or its input, which the caller gave away) and
        # never writes into them later, since it must not modify state in place.
        return out[:batch].to(torch.float32).numpy()

    def _scatter(self, padded: np.ndarray, state: State) -> None:
        idx = torch.from_numpy(padded).to(self.device)
        for name, t in self._table.items():
            t.index_copy_(0, idx, state[name].to(t.dtype))

    def _write_back(self) -> None:
        """Scatter the held state (if any) into the table."""
        held, self._held = self._held, None
        if held is not None:
            self._scatter(*held)

    def _run_cuda(self, slots: list[int] | np.ndarray, hops: np.ndarray) -> np.ndarray:
        """One call on CUDA: graphs (and the static buffers) hold one hop per row, so a call of
        T hops (a worker's bulk block of 20 ms frames) runs as T one-hop calls in order."""
        if hops.shape[1] > self.hop_size:
            hop = self.hop_size
            return np.concatenate([self._run_cuda(slots, hops[:, k * hop:(k + 1) * hop])
                                   for k in range(hops.shape[1] // hop)], axis=1)
        batch = len(slots)
        bucket = self._bucket(batch)
        io = self._io
        graph = self._graph_for(bucket) if self.use_graphs else None
        # Fill the pinned host buffers, then copy to the static device buffers.
        io["in_host"][:batch].copy_(_as_tensor(hops))
        io["in_host"][batch:bucket].zero_()
        io["idx_host"][:batch].copy_(torch.from_numpy(np.asarray(slots, dtype=np.int64)))
        io["idx_host"][batch:bucket].fill_(SCRATCH_SLOT)
        io["in_dev"][:bucket].copy_(io["in_host"][:bucket], non_blocking=True)
        io["idx_dev"][:bucket].copy_(io["idx_host"][:bucket], non_blocking=True)
        if graph is not None:
            graph[0].replay()
            out = graph[1]
        else:
            out = self._step_into(io["in_dev"][:bucket], io["idx_dev"][:bucket])
        io["out_host"][:bucket].copy_(out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return io["out_host"][:batch].numpy().copy()

    def _graph_for(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, Tensor] | None:
        """Capture (once per bucket and table) the gather-step-scatter of `bucket` rows.

        Warm-up and capture run with every index on the scratch slot, so they never disturb a
        live stream's state; replays read whatever indices and hops sit in the static buffers.
        """
        cached = self._graphs.get(bucket)
        if cached is not None:
            return cached
        self.captures += 1
        if self.started:
            self.late_captures += 1
            log.warning("capturing the CUDA graph of batch bucket %d on a live tick", bucket)
        io = self._io
        hops, idx = io["in_dev"][:bucket], io["idx_dev"][:bucket]
        current = torch.cuda.current_stream(self.device)
        idx.fill_(SCRATCH_SLOT)
        # Warm up on a side stream (as torch.cuda.graphs asks): lazy inits, cuFFT plans and the
        # model's derived-weight caches happen here, not inside the capture. A model error
        # here is the tick's error, not a reason to give up graphs.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step_into(hops, idx)
        current.wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._step_into(hops, idx)
        except Exception as exc:  # a model with host syncs cannot be captured: run eagerly
            log.warning("CUDA graph capture failed (%s); running without graphs", exc)
            self.use_graphs = False
            self.graph_error = f"{type(exc).__name__}: {exc}"
            torch.cuda.synchronize(self.device)
            return None
        self._graphs[bucket] = (graph, out)
        return self._graphs[bucket]
