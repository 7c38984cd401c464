"""The live call beside the fuzzing: a real WHIP publisher sending real noisy speech (Opus, by
aiortc) with `mode=on`, and a real WHEP subscriber to it, in a child process of their own so
that the fuzzer's work never delays their audio.

The parent asks for `stats()` after each batch: frames the subscriber received so far, the
peers' states, and the level of the quietest received 20 ms blocks of the last seconds beside
the quietest blocks of what is sent. Denoised audio is far quieter there (the noise-only
stretches and speech pauses); audio passed through raw is at the noise's level
(`sfu.bench.e2e` measures the same thing exactly, aligned; this is the cheap check).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import re
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

QUIET_PERCENTILE = 20
WINDOW_FRAMES = 150  # 3 s of received 20 ms frames
SPEECH_FILE = "tests/data/vctk_p286_011.flac"
NOISE_FILE = "tests/data/doing_the_dishes_4s.flac"


def noisy_speech(snr_db: float = 5.0) -> np.ndarray:
    """Real speech (VCTK p286_011) in a real kitchen recording at `snr_db`, after 1.5 s of
    the noise alone, 48 kHz float32: the checkout's tests/data, else the shared corpus."""
    import soundfile
    from scipy.signal import resample_poly

    from denoiser.paths import REPO_ROOT, SHARED_DATA_DIR
    from sfu.bench.e2e_scoring import mix_clip

    pairs = [(REPO_ROOT / SPEECH_FILE, REPO_ROOT / NOISE_FILE),
             (SHARED_DATA_DIR / "clean/vctk_p286/p286_011.wav",
              SHARED_DATA_DIR / "noise/speech_commands_bg/doing_the_dishes.wav")]
    for speech_path, noise_path in pairs:
        if speech_path.is_file() and noise_path.is_file():
            break
    else:
        raise FileNotFoundError("no speech and noise recordings: neither tests/data in a "
                                f"checkout nor {SHARED_DATA_DIR}")

    def load(path: Path) -> np.ndarray:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        return mono if rate == 48_000 else resample_poly(mono, 48_000, rate).astype(np.float32)

    return mix_clip("live", load(speech_path), load(noise_path), snr_db).noisy


def block_levels_db(audio: np.ndarray, block: int = 960) -> np.ndarray:
    n = audio.size // block
    blocks = audio[: n * block].reshape(n, block).astype(np.float64)
    return 10 * np.log10(np.mean(blocks ** 2, axis=1) + 1e-12)


def loop_track(noisy: np.ndarray) -> Any:
    """A real-time track playing `noisy` over and over (the e2e bench's `ClipTrack`,
    re-cued each time the clip ends), already started."""
    from sfu.bench.e2e import ClipTrack

    class LoopTrack(ClipTrack):
        async def recv(self) -> Any:
            frame = await super().recv()
            if self.finished.is_set():
                self.finished.clear()
                self._cued_at = self._pts
            return frame

    track = LoopTrack(noisy, post_roll=0)
    track.cue()
    return track


@dataclass
class CallSpec:
    base_url: str
    room: str
    publisher: str
    publish_token: str
    subscribe_token: str


class LiveCall:
    """The parent's handle on the call's child process."""

    def __init__(self, spec: CallSpec) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        self.answers: list[str] = []

    def _ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the live call did not answer {command!r}")
        reply: dict[str, Any] = self._conn.recv()
        if "error" in reply:
            raise RuntimeError(f"live call: {reply['error']}")
        return reply

    async def start(self) -> dict[str, Any]:
        """Connect both peers; returns the server's two SDP answers (for its media ports)."""
        reply = await asyncio.to_thread(self._ask, "start", 90.0)
        self.answers = reply["answers"]
        return reply

    async def stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._ask, "stats", 20.0)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._ask, "stop", 30.0)
        await asyncio.to_thread(self.proc.join, 10)
        if self.proc.is_alive():
            self.proc.kill()

    def media_ports(self) -> list[tuple[str, int]]:
        """(address, port) of the server's host candidates in its answers."""
        found = []
        for sdp in self.answers:
            for addr, port in re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", sdp):
                if ":" not in addr:  # IPv4 (the fuzzer's socket)
                    found.append((addr, int(port)))
        return found


# -- the child process ---------------------------------------------------------------------------

def _main(conn: Connection, spec: CallSpec) -> None:
    asyncio.run(_child(conn, spec))


async def _child(conn: Connection, spec: CallSpec) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from sfu.bench.harness import wait_for

    noisy = noisy_speech()
    sent_quiet = float(np.percentile(block_levels_db(noisy), QUIET_PERCENTILE))
    recent: deque[float] = deque(maxlen=WINDOW_FRAMES)
    frames = 0

    async def collect(track: MediaStreamTrack) -> None:
        nonlocal frames
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                data = frame.to_ndarray().astype(np.float32).reshape(-1) / 32768
                recent.append(float(10 * np.log10(np.mean(data.astype(np.float64) ** 2)
                                                  + 1e-12)))
                frames += 1

    session = aiohttp.ClientSession()
    pub, sub = RTCPeerConnection(), RTCPeerConnection()
    locations: list[tuple[str, str]] = []
    answers: list[str] = []
    track = loop_track(noisy)

    async def post(pc: RTCPeerConnection, path: str, token: str) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        async with session.post(spec.base_url + path, data=pc.localDescription.sdp,
                                headers={"Authorization": f"Bearer {token}",
                                         "Content-Type": "application/sdp"}) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"POST {path} answered {resp.status}: {body}")
            locations.append((resp.headers["Location"], token))
        answers.append(body)
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        await wait_for(lambda: pc.connectionState == "connected", f"{path} to connect", 30)

    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            try:
                if command == "start":
                    pub.addTransceiver(track, direction="sendonly")
                    await post(pub, f"/whip/{spec.room}?mode=on", spec.publish_token)
                    sub.addTransceiver("audio", direction="recvonly")
                    sub.on("track", lambda t: asyncio.ensure_future(collect(t)))
                    await post(sub, f"/whep/{spec.room}/{spec.publisher}", spec.subscribe_token)
                    await wait_for(lambda: frames >= 10, "the subscriber's first frames", 30)
                    conn.send({"answers": answers})
                elif command == "stats":
                    levels = list(recent)
                    quiet = float(np.percentile(levels, QUIET_PERCENTILE)) if levels else None
                    conn.send({"frames": frames, "publisher": pub.connectionState,
                               "subscriber": sub.connectionState, "received_quiet_db": quiet,
                               "sent_quiet_db": sent_quiet, "window_frames": len(levels)})
                elif command == "stop":
                    for location, token in reversed(locations):
                        with contextlib.suppress(Exception):
                            async with session.delete(
                                    spec.base_url + location,
                                    headers={"Authorization": f"Bearer {token}"}):
                                pass
                    conn.send({"frames": frames})
                    return
            except Exception as err:  # the parent reports it; the call is then broken
                conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        track.stop()
        await pub.close()
        await sub.close()
        await session.close()
