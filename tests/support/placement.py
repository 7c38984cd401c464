"""Real processes for the placement tests: a `redis-server` on a free loopback port, SFU nodes
(`denoise-sfu serve --redis`) and workers (`denoise-sfu worker --redis`)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from prometheus_client.parser import text_string_to_metric_families

from sfu.auth import issue_token

ADMIN_TOKEN = "admin-test-token"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


class RedisServer:
    """`redis-server` on 127.0.0.1:port with no persistence; `stop()` and `start()` again
    (same port) stand for an outage that loses every key."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (scripts/install-system-deps.sh)")
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # an outage, not a clean shutdown
            self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Proc:
    """A `denoise-sfu` child process and where it logs."""

    proc: subprocess.Popen[str]
    log_path: Path
    info: dict[str, object] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Node(Proc):
    url: str = ""

    def get(self, path: str, timeout: float = 5) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return resp.read().decode()


def spawn_node(tmp: Path, name: str, host: str, redis_url: str, secret: str,
               flags: Sequence[str] = ()) -> Node:
    """`denoise-sfu serve --redis --engine workers` on a free port (see `Node.wait_ready`)."""
    port = free_port(host)
    url = f"http://{host}:{port}"
    log_path = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "serve", "--host", host, "--port", str(port),
         "--public-url", url, "--redis", redis_url, "--secret", secret, "--node-id", name,
         "--admin-token", ADMIN_TOKEN, "--engine", "workers", "--log-level", "info",
         *flags],
        stdout=subprocess.DEVNULL, stderr=log_path.open("w"), text=True, env=clean_env())
    return Node(proc, log_path, url=url)


def wait_ready(node: Node, wait: float = 90) -> Node:
    """Once its /readyz answers 200."""
    deadline = time.monotonic() + wait
    while True:
        if node.proc.poll() is not None:
            raise RuntimeError(f"node exited ({node.proc.returncode}):\n{node.logs()}")
        try:
            if node.get("/readyz", timeout=2)[0] == 200:
                return node
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            node.stop(signal.SIGKILL)
            raise RuntimeError(f"node never became ready:\n{node.logs()}")
        time.sleep(0.2)


def spawn_worker(tmp: Path, name: str, redis_url: str, secret: str,
                 flags: Sequence[str] = ()) -> Proc:
    """`denoise-sfu worker --redis` on a free loopback port (see `wait_listening`)."""
    log_path = tmp / f"{name}.log"
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "worker", "--listen", "127.0.0.1:0",
         "--redis", redis_url, "--secret", secret, "--worker-id", name, "--device", "cpu",
         "--threads", "1", "--metrics", f"127.0.0.1:{metrics_port}",
         "--admin-token", ADMIN_TOKEN, *flags],
        stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True, env=clean_env())
    return Proc(proc, log_path, {"metrics": f"http://127.0.0.1:{metrics_port}"})


def wait_listening(worker: Proc) -> Proc:
    """Once it printed its `listening` line (its address is then in `info`)."""
    assert worker.proc.stdout is not None
    line = worker.proc.stdout.readline()
    if not line:
        worker.proc.wait(timeout=30)
        raise RuntimeError(f"worker exited ({worker.proc.returncode}):\n{worker.logs()}")
    worker.info.update(json.loads(line))
    return worker


def scrape(url: str) -> Samples:
    """A /metrics page as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        return parse_metrics(resp.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- call clients (aiortc peers over WHIP/WHEP, following 307) -------------------------------

FRAME = 960


class LoopTrack(MediaStreamTrack):
    """A real-time audio track looping `audio` (48 kHz mono float) for as long as it runs."""

    kind = "audio"

    def __init__(self, audio: np.ndarray) -> None:
        super().__init__()
        self.pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        self.pts = 0
        self.t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self.t0 = self.t0 or now
        delay = self.t0 + self.pts / 48_000 - now
        if delay > 0:
            await asyncio.sleep(delay)
        index = (self.pts + np.arange(FRAME)) % self.pcm.size
        frame = av.AudioFrame.from_ndarray(np.repeat(self.pcm[index], 2).reshape(1, -1),
                                           format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, self.pts
        frame.time_base = fractions.Fraction(1, 48_000)
        self.pts += FRAME
        return frame


def noisy_tones(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Voiced-like harmonic bursts in steady noise: something a denoiser changes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 48_000)) / 48_000
    voiced = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((180, 360, 540), 1))
    gate = (np.sin(2 * np.pi * 1.5 * t) > 0).astype(np.float64)
    return (0.2 * voiced * gate + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


class Arrivals:
    """Every frame one listener receives, with its arrival time (monotonic seconds)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.ensure_future(self._collect(track))

    async def _collect(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.times.append(time.monotonic())
                if len(self.times) >= 10:
                    self.arrived.set()

    def max_gap(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The longest time between two frames that arrived within [since, until]."""
        times = [t for t in self.times if since <= t <= until]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Call:
    """One WHIP or WHEP session: its peer connection, the node that answered, its URL."""

    pc: RTCPeerConnection
    base: str
    location: str
    token: str
    redirects: int


async def post_offer(session: aiohttp.ClientSession, base: str, path: str, token: str,
                     pc: RTCPeerConnection, timeout: float = 20) -> Call:
    """POST the offer to `base + path`, following 307 to the owner (with the token again: an
    HTTP client drops Authorization on a redirect to another origin); 201 expected."""
    await pc.setLocalDescription(await pc.createOffer())
    url, redirects = base + path, 0
    while True:
        async with session.post(url, data=pc.localDescription.sdp, allow_redirects=False,
                                headers={"Authorization": f"Bearer {token}",
                                         "Content-Type": "application/sdp"}) as resp:
            body = await resp.text()
            if resp.status == 307 and redirects < 3:
                url, redirects = resp.headers["Location"], redirects + 1
                continue
            assert resp.status == 201, f"POST {url} answered {resp.status}: {body}"
            final = f"{resp.url.scheme}://{resp.url.host}:{resp.url.port}"
            location = resp.headers["Location"]
            break
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, f"{path} never connected"
        await asyncio.sleep(0.05)
    return Call(pc, final, location, token, redirects)


async def publish(session: aiohttp.ClientSession, base: str, room: str, identity: str,
                  secret: str, track: MediaStreamTrack, mode: str = "on") -> Call:
    pc = RTCPeerConnection()
    pc.addTransceiver(track, direction="sendonly")
    token = issue_token(secret, room, identity, 600, ("publish",))
    return await post_offer(session, base, f"/whip/{room}?mode={mode}", token, pc)


async def listen(session: aiohttp.ClientSession, base: str, room: str, identity: str,
                 target: str, secret: str, arrivals: Arrivals) -> Call:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.on("track", arrivals.attach)
    token = issue_token(secret, room, identity, 600, ("subscribe",))
    return await post_offer(session, base, f"/whep/{room}/{target}", token, pc)


async def hang_up(session: aiohttp.ClientSession, call: Call) -> None:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with session.delete(call.base + call.location,
                                  headers={"Authorization": f"Bearer {call.token}"}):
            pass
    await call.pc.close()


async def ascrape(session: aiohttp.ClientSession, base: str) -> Samples:
    """`scrape`, without blocking the event loop the peers run on."""
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    return parse_metrics(text)


WANTED = ("denoise_sfu_frames_", "denoise_sfu_worker_", "denoise_sfu_placement_",
          "denoise_sfu_participants")


def parse_metrics(text: str) -> Samples:
    """The families the tests read (parsing the whole page costs the peers' event loop)."""
    kept = "\n".join(line for line in text.splitlines() if line.startswith(WANTED))
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(kept + "\n")
            for sample in family.samples}
