"""Sizing an engine: which device, which batch buckets, and how many streams one thread keeps
in real time when nothing batches (measured at start)."""

from __future__ import annotations

import time

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
