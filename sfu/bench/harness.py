"""What the benches and the tests share to drive a server with real peers.

aioice offers no loopback host candidates, so servers and peers meet on the address of the
default route's interface (no packet leaves the machine).
"""

from __future__ import annotations

import asyncio
import fractions
import socket
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack

RATE = 48_000


def interface_address() -> str:
    """The IPv4 address of the default route's interface (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            return str(sock.getsockname()[0])
        except OSError:
            return socket.gethostbyname(socket.gethostname())


async def wait_for(predicate: Callable[[], bool], what: str = "the condition",
                   timeout: float = 15.0) -> None:
    """Poll `predicate` every 50 ms until it holds; TimeoutError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class ToneTrack(MediaStreamTrack):
    """A microphone playing one sine tone, in real-time 20 ms s16 mono frames."""

    kind = "audio"

    def __init__(self, freq: float = 440.0, level: float = 0.3) -> None:
        super().__init__()
        self.freq, self.level = freq, level
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (self._pts + np.arange(960)) / RATE
        pcm = (self.level * 32767 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += 960
        return frame
