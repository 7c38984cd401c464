"""A running SFU for tests (served on a real port of the interface address) and Opus files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiohttp import web

from sfu.context import CONTEXT, SfuContext

TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


@dataclass
class RunningSfu:
    """An SFU app served on a real TCP port of the interface address."""

    app: web.Application
    base_url: str
    session: aiohttp.ClientSession

    @property
    def ctx(self) -> SfuContext:
        return self.app[CONTEXT]

    def url(self, path: str) -> str:
        return self.base_url + path


SfuFactory = Callable[..., Awaitable[RunningSfu]]


def write_opus(path: Path, samples: np.ndarray, rate: int = 48_000) -> Path:
    """Encode mono float samples to an Ogg/Opus file (what a real client would send)."""
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48_000, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
