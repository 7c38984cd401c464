"""The engine interface the SFU talks to: in-process today, a remote worker behind the same API.

An `Engine` owns per-stream model state somewhere (this process, or a worker over a socket).
A caller opens a stream, sends it audio hop by hop with `process`, and closes it. `process`
resolves when the tick that carried the hop has run; the caller decides what to do when that
is too late (the SFU passes the original audio through and counts it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class EngineError(RuntimeError):
    """The engine cannot serve a request (unknown stream, bad input, engine closed)."""


class EngineFull(EngineError):
    """No free slot for another stream."""


class UnknownStream(EngineError):
    """The engine holds no such stream (never opened, closed, or lost with a worker that
    restarted): a caller opens it again."""


def validate_hops(samples: Any, hop_size: int) -> np.ndarray:
    """`samples` if it is float32 mono audio of a whole number of hops, else EngineError."""
    if not isinstance(samples, np.ndarray):
        raise EngineError(f"samples must be a numpy array, got {type(samples).__name__}")
    if samples.dtype != np.float32:
        raise EngineError(f"samples must be float32, got {samples.dtype}")
    if samples.ndim != 1:
        raise EngineError(f"samples must be 1-D (mono), got shape {samples.shape}")
    if samples.size == 0 or samples.size % hop_size:
        raise EngineError(f"samples must be a positive multiple of the hop "
                          f"({hop_size}), got {samples.size}")
    if not np.isfinite(samples).all():
        raise EngineError("samples contain NaN or infinite values")
    return samples


class Engine(ABC):
    """Batched, stateful denoising of many independent 48 kHz mono streams."""

    sample_rate: int
    hop_size: int
    latency_samples: int

    @abstractmethod
    async def start(self) -> None:
        """Load the model and begin ticking."""

    @abstractmethod
    async def close(self) -> None:
        """Stop ticking; pending `process` calls fail with EngineError."""

    @abstractmethod
    def open_stream(self, stream_id: str) -> None:
        """Reserve a slot with fresh state for `stream_id` (EngineFull if none is free)."""

    @abstractmethod
    def close_stream(self, stream_id: str) -> None:
        """Release the slot of `stream_id`; unknown ids are ignored."""

    @abstractmethod
    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        """Denoise `samples` (float32, mono, a whole number of hops) of one stream.

        Returns the same number of samples of model output (delayed by `latency_samples`).
        """
