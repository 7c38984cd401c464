"""A WHIP or WHEP client peer for tests (real aiortc, real Opus), and polling for conditions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu.bench.harness import ToneTrack, wait_for
from support.sfu import RunningSfu

__all__ = ["Client", "ToneTrack", "connect", "make_offer", "wait_for"]


async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    """Offer/answer between two in-process peers (no server between them)."""
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def make_offer(direction: str) -> str:
    """A real aiortc audio offer (sendonly = a WHIP publisher's shape, recvonly = WHEP)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


class Client:
    """One WHIP or WHEP client peer."""

    def __init__(self, sfu: RunningSfu, token: str) -> None:
        self.sfu, self.token = sfu, token
        self.pc = RTCPeerConnection()
        self.location: str | None = None
        self.received: list[np.ndarray] = []
        self.player: MediaPlayer | None = None

    async def post(self, path: str) -> int:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with self.sfu.session.post(self.sfu.url(path), data=self.pc.localDescription.sdp,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/sdp"}) as resp:
            if resp.status != 201:
                return resp.status
            assert resp.headers["Content-Type"] == "application/sdp"  # no parameters
            assert resp.headers["ETag"]
            self.location = resp.headers["Location"]
            answer = await resp.text()
        assert "a=candidate" in answer  # non-trickle: candidates gathered before answering
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_for(lambda: self.pc.connectionState == "connected")
        return 201

    async def publish(self, room: str, audio: Path, mode: str = "on") -> int:
        self.player = MediaPlayer(str(audio), loop=True)
        self.pc.addTrack(self.player.audio)
        return await self.post(f"/whip/{room}?mode={mode}")

    async def subscribe(self, room: str, identity: str) -> int:
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", lambda track: asyncio.ensure_future(self._collect(track)))
        return await self.post(f"/whep/{room}/{identity}")

    async def _collect(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.received.append(frame.to_ndarray().astype(np.float32).reshape(-1) / 32768)
        except MediaStreamError:
            pass

    async def delete(self, token: str | None = None) -> int:
        assert self.location is not None
        async with self.sfu.session.delete(
                self.sfu.url(self.location),
                headers={"Authorization": f"Bearer {token or self.token}"}) as resp:
            return resp.status

    async def close(self) -> None:
        await self.pc.close()
        if self.player is not None and self.player.audio is not None:
            self.player.audio.stop()

    def rms_since(self, start: int) -> float:
        audio = np.concatenate(self.received[start:]) if len(self.received) > start else [0.0]
        return float(np.sqrt(np.mean(np.square(audio))))
