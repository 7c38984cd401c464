"""A real aiortc client of the WebSocket room protocol (docs/ws-protocol.md).

It does what the demo page does: join with a token, publish one audio track on its one offer,
answer every server offer, and record what it receives per transceiver `mid`, so tests can say
whose audio arrived where.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

RATE = 48_000


class WsPeer:
    """One participant speaking the room protocol over aiohttp + aiortc."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str,
                 track: MediaStreamTrack | None = None, mode: str = "auto") -> None:
        self.http, self.base_url, self.token = http, base_url, token
        self.track, self.mode = track, mode
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pc: RTCPeerConnection | None = None
        self.messages: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.participants: list[dict[str, Any]] = []
        self.identity: str | None = None
        self.audio: dict[str, list[np.ndarray]] = {}  # mid -> decoded mono chunks
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # -- protocol --------------------------------------------------------------------------
    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.base_url + "/ws")
        self._tasks.append(asyncio.ensure_future(self._read()))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_json(message)

    async def join(self) -> dict[str, Any]:
        await self.connect()
        await self.send({"type": "join", "token": self.token, "mode": self.mode})
        joined = await self.wait_message(lambda m: m["type"] in ("joined", "error"))
        if joined["type"] == "joined":
            self.identity = joined["identity"]
        return joined

    async def publish(self) -> None:
        """The client's one offer: its track sendonly (or a recvonly section to listen)."""
        pc = self.pc = RTCPeerConnection()
        pc.on("track", self._on_track)
        if self.track is not None:
            pc.addTransceiver(self.track, direction="sendonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "offer", "sdp": pc.localDescription.sdp})
        await self.wait_message(lambda m: m["type"] == "answer")

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = msg.json()
            self.messages.append(message)
            kind = message.get("type")
            if kind == "error":
                self.errors.append(message)
            elif kind == "answer" and self.pc is not None:
                await self.pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
            elif kind == "offer" and self.pc is not None:
                await self.pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})
            elif kind in ("participants", "joined"):
                self.participants = message["participants"]
            self._changed.set()
        self.messages.append({"type": "_closed", "code": self.ws.close_code})
        self._changed.set()

    async def wait_message(self, predicate: Callable[[dict[str, Any]], bool],
                           timeout: float = 10.0, start: int = 0) -> dict[str, Any]:
        """The first message from index `start` on that matches (waiting up to `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages[start:]:
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message; got {self.messages[-5:]}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def wait_participants(self, predicate: Callable[[dict[str, dict[str, Any]]], bool],
                                timeout: float = 15.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            by_identity = {p["identity"]: p for p in self.participants}
            if predicate(by_identity):
                return by_identity
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"participants never matched: {by_identity}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    # -- media -----------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        chunks = self.audio.setdefault(mid or "?", [])
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                channels = len(frame.layout.channels)
                chunks.append(pcm.reshape(-1, channels).mean(axis=1))

    def participants_by_identity(self) -> dict[str, dict[str, Any]]:
        return {p["identity"]: p for p in self.participants}

    def received(self, identity: str) -> np.ndarray:
        """Everything received so far on the transceiver that carries `identity`."""
        by_identity = {p["identity"]: p for p in self.participants}
        mid = by_identity.get(identity, {}).get("mid")
        chunks = self.audio.get(mid, []) if mid is not None else []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def mark(self) -> dict[str, int]:
        """How many chunks each mid has so far (to look only at audio after this point)."""
        return {mid: len(chunks) for mid, chunks in self.audio.items()}

    def received_since(self, identity: str, mark: dict[str, int]) -> np.ndarray:
        by_identity = {p["identity"]: p for p in self.participants}
        mid = by_identity.get(identity, {}).get("mid")
        chunks = self.audio.get(mid, [])[mark.get(mid, 0):] if mid is not None else []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def tone_power(samples: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Mean power of `samples` within ±15 Hz of `freq` (relative to the whole signal's)."""
    if samples.size < rate // 10:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    band = (freqs > freq - 15) & (freqs < freq + 15)
    return float(spectrum[band].sum() / (spectrum.sum() + 1e-12))
