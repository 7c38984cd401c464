"""Sizing an engine: which device, which batch buckets, and how many streams one thread keeps
in real time when nothing batches (measured at start)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from denoiser.engine import EngineError
from denoiser.model.streaming import StreamingModel
from denoiser.model.traced import TracedSteps


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` picks CUDA when available; asking for CUDA without it is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise EngineError(f"unsupported device {device!r} (use auto, cpu or cuda)")
    return dev


def default_buckets(max_streams: int) -> tuple[int, ...]:
    """Powers of two up to (and including) the first one >= max_streams."""
    buckets, b = [], 1
    while True:
        buckets.append(b)
        if b >= max_streams:
            return tuple(buckets)
        b *= 2


def unbatched_capacity(model: StreamingModel, share: float = 0.6, reps: int = 30,
                       limit: int = 256) -> int:
    """Streams one engine thread keeps in real time when their hops never share a tick.

    That is the worst case for batching (every hop its own batch-1 step), and the usual one at
    low load, when speakers' packets arrive at unrelated instants. Measured here, now: the
    median batch-1 step of `model` on the CPU (traced where the engine would trace it),
    against `share` of a hop's duration.
    """
    hop_s = model.hop_size / model.sample_rate
    with torch.inference_mode():
        step = TracedSteps(model) if model.traceable else model.step_many
        state = model.initial_state(1)
        hop = torch.zeros(1, model.hop_size)
        times = []
        for _ in range(reps + 3):
            start = time.perf_counter()
            _, state = step(hop, state)
            times.append(time.perf_counter() - start)
    step_s = float(np.median(times[3:]))
    return max(1, min(limit, int(share * hop_s / step_s)))


# -- admission from the batched tick cost ------------------------------------------------
# How many streams an engine admits: what it keeps in real time *batched*, measured at start
# and re-measured from every tick it runs.
#
# The old rule (`unbatched_capacity`) admitted what one engine thread keeps when no two hops
# ever share a tick: 4-5 streams of the default model per core, where the batched engine runs
# 40. Here the cost of a tick is a line, `tick(B) = fixed + per_stream * B` for a 20 ms frame of
# B streams, fitted at start from two measured batch sizes; the engine admits the largest B
# whose tick fits `share` of a frame. Every tick the engine then runs feeds `observe`, which
# follows the per-stream cost of the ticks of this machine as it is now (other processes,
# the event loop's own work, a hotter or cooler CPU): an exponential average of
# `(forward - fixed) / B` over ticks of at least `MIN_BATCH` streams. When it rises so far that
# the admitted streams no longer fit, the engine sheds the newest ones: their hops pass through
# (counted `engine_full`, engine error `shed`) until the cost falls and they are let back in.

MIN_BATCH = 4  # smaller ticks say little about the per-stream cost
SMOOTHING = 0.05  # weight of one tick in the running per-stream cost


@dataclass
class TickCost:
    """`tick(B) = fixed_ms + per_stream_ms * B` for one frame of `frame_hops` hops."""

    fixed_ms: float
    per_stream_ms: float
    frame_hops: int = 2
    hop_ms: float = 10.0

    def streams_within(self, share: float, limit: int) -> int:
        budget = share * self.frame_hops * self.hop_ms - self.fixed_ms
        if budget <= 0:
            return 1  # never none: one stream late is better than a silent refusal of all
        return max(1, min(limit, math.floor(budget / self.per_stream_ms)))


def measure_tick_cost(model: StreamingModel, frame_hops: int = 2, batches: tuple[int, int] =
                      (1, 32), reps: int = 8) -> TickCost:
    """Fit the line from the median step of `frame_hops` hops at two batch sizes, run as the
    engine would run them (traced where it would trace)."""
    times = []
    with torch.inference_mode():
        step = TracedSteps(model) if model.traceable else model.step_many
        for batch in batches:
            state = model.initial_state(batch)
            hops = torch.zeros(batch, frame_hops * model.hop_size)
            samples = []
            for _ in range(reps + 2):
                start = time.perf_counter()
                _, state = step(hops, state)
                samples.append(time.perf_counter() - start)
            times.append(1e3 * float(np.median(samples[2:])))
    (b1, b2), (t1, t2) = batches, times
    per_stream = max((t2 - t1) / (b2 - b1), 1e-6)
    fixed = max(t1 - per_stream * b1, 0.0)
    return TickCost(fixed, per_stream, frame_hops, 1e3 * model.hop_size / model.sample_rate)


class Admission:
    """The engine's admission limit: from a measured `TickCost`, kept current by `observe`."""

    def __init__(self, cost: TickCost, share: float = 0.8, limit: int = 256) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.start_cost = cost
        self.fixed_ms = cost.fixed_ms
        self.per_stream_ms = cost.per_stream_ms
        self.share = share
        self.cap = limit
        self.frame_ms = cost.frame_hops * cost.hop_ms
        self.ticks_observed = 0

    @property
    def limit(self) -> int:
        """Streams the engine admits now."""
        return TickCost(self.fixed_ms, self.per_stream_ms, 1, self.frame_ms).streams_within(
            self.share, self.cap)

    @property
    def measured_at_start(self) -> int:
        return self.start_cost.streams_within(self.share, self.cap)

    def observe(self, streams: int, hops_per_stream: float, forward_ms: float) -> None:
        """One tick: `streams` ran `hops_per_stream` hops each in `forward_ms`."""
        if streams < MIN_BATCH or hops_per_stream <= 0:
            return
        per_frame = forward_ms * self.start_cost.frame_hops / hops_per_stream
        cost = max((per_frame - self.fixed_ms) / streams, 1e-6)
        self.per_stream_ms += SMOOTHING * (cost - self.per_stream_ms)
        self.ticks_observed += 1
