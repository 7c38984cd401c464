"""The live system a fuzz or soak bench runs against: a real `denoise-sfu worker` process and a
real `denoise-sfu serve` process on this machine, and what the bench reads of them.

HTTP and the worker listen on 127.0.0.1 only. Media cannot: aioice offers no loopback host
candidates, so the server's ICE candidates are on the default route's interface address (an
address of this machine; no packet leaves it). `check_local` refuses any other target.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from denoiser.worker.spawn import SpawnedWorker, spawn_worker

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_local(address: str) -> str:
    """`address` if it is loopback or one of this machine's own addresses (bindable here),
    else ValueError: the benches send nothing anywhere else."""
    if address.startswith("127."):
        return address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as err:
            raise ValueError(f"{address} is not an address of this machine") from err
    return address


# -- /proc -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcStats:
    rss_kib: int
    fds: int
    threads: int
    #: The private part of the RSS (heap, arenas, stacks). The rest is pages of the
    #: process's libraries, read in as code paths are first used: reclaimable, and bounded by
    #: the libraries' size, so it tells warm-up apart from memory something holds.
    rss_anon_kib: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"rss_mib": round(self.rss_kib / 1024, 1),
                "rss_anon_mib": round(self.rss_anon_kib / 1024, 1), "fds": self.fds,
                "threads": self.threads}


def proc_stats(pid: int) -> ProcStats:
    """RSS, open file descriptors and threads of process `pid` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    anon = re.search(r"^RssAnon:\s+(\d+)", status, re.M)
    return ProcStats(rss, len(os.listdir(f"/proc/{pid}/fd")), threads,
                     int(anon.group(1)) if anon else 0)


def thread_names(pid: int) -> dict[str, int]:
    """Threads of process `pid` by name (what leaks, when threads do)."""
    out: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            out[name] = out.get(name, 0) + 1
    return out


def udp_ports(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every IPv4 UDP socket process `pid` holds (its media ports)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found = []
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) > 9 and parts[9] in inodes:
            hex_addr, hex_port = parts[1].split(":")
            addr = socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1])
            found.append((addr, int(hex_port, 16)))
    return found


# -- /metrics ------------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[str, float]:
    """Every sample as `name{label="v",...}` -> value (labels sorted), plus bare names."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels match `labels` (a value ending in `*` matches
    any value with that prefix)."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        ok = True
        for k, want in labels.items():
            got = have.get(k)
            if got is None or (got[:len(want) - 1] != want[:-1] if want.endswith("*")
                               else got != want):
                ok = False
        if ok:
            total += value
    return total


def server_5xx(metrics: dict[str, float]) -> int:
    """Server errors the server counted: every 5xx but 503 (a deliberate "try later": room
    full, engine or placement unavailable), which `server_503` counts apart."""
    total = metric_sum(metrics, "denoise_sfu_http_requests_total", status="5*")
    return int(total - server_503(metrics))


def server_503(metrics: dict[str, float]) -> int:
    return int(metric_sum(metrics, "denoise_sfu_http_requests_total", status="503"))


# -- the processes -------------------------------------------------------------------------------

@dataclass
class LiveSystem:
    """A worker and a server process, and an HTTP session to the server."""

    server: subprocess.Popen[bytes]
    worker: SpawnedWorker
    port: int
    worker_port: int
    worker_metrics_port: int
    secret: str
    admin_token: str
    media_host: str
    server_log: Path
    worker_log: Path
    session: aiohttp.ClientSession = field(init=False)
    host: str = LOOPBACK

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def alive(self) -> dict[str, bool]:
        return {"server": self.server.poll() is None, "worker": self.worker.proc.poll() is None}

    def stats(self) -> dict[str, ProcStats]:
        return {"server": proc_stats(self.server.pid), "worker": proc_stats(self.worker.proc.pid)}

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(self.url("/metrics"),
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/metrics answered {resp.status}")
            return parse_metrics(await resp.text())

    async def worker_metrics(self) -> dict[str, float]:
        url = f"http://{LOOPBACK}:{self.worker_metrics_port}/metrics"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return parse_metrics(await resp.text())

    async def healthz(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The server's /healthz body, or None if it did not answer 200 in time."""
        try:
            async with self.session.get(self.url("/healthz"),
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    return None
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    def log_errors(self) -> dict[str, dict[str, int]]:
        """Log lines at level error or above (or bare tracebacks) each process wrote so far,
        by logger."""
        out: dict[str, dict[str, int]] = {}
        for name, path in (("server", self.server_log), ("worker", self.worker_log)):
            text = path.read_text(errors="replace") if path.exists() else ""
            counts: dict[str, int] = {}
            for line in text.splitlines():
                if line.startswith("Traceback"):
                    key = "traceback"
                elif '"level": "error"' in line or '"level": "critical"' in line:
                    found = re.search(r'"logger": "([^"]*)", "msg": "([^"]*)"', line)
                    key = f"{found.group(1)}: {found.group(2)[:60]}" if found else "error"
                else:
                    continue
                counts[key] = counts.get(key, 0) + 1
            out[name] = counts
        return out

    def error_lines(self, name: str, limit: int = 5) -> list[str]:
        path = self.server_log if name == "server" else self.worker_log
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line[:400] for line in text.splitlines()
                 if '"level": "error"' in line or '"level": "critical"' in line]
        return lines[-limit:]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@contextlib.asynccontextmanager
async def live_system(log_dir: Path, media_host: str, *, connect_timeout: float = 10.0,
                      max_streams: int = 16, worker_threads: int = 1,
                      extra_serve_flags: tuple[str, ...] = ()) -> Any:
    """Start `denoise-sfu worker` and `denoise-sfu serve --engine workers` (both loopback),
    wait until the server's /healthz answers, yield a `LiveSystem`, stop both."""
    check_local(media_host)
    secret, admin = secrets.token_hex(32), secrets.token_hex(16)
    log_dir.mkdir(parents=True, exist_ok=True)
    worker_log, server_log = log_dir / "worker.log", log_dir / "server.log"
    metrics_port = free_port()
    with open(worker_log, "wb") as wlog:
        worker = await asyncio.to_thread(
            spawn_worker, ["--device", "cpu", "--secret", secret, "--threads",
                           str(worker_threads), "--max-streams", str(max_streams),
                           "--metrics", f"{LOOPBACK}:{metrics_port}"],
            _env(), LOOPBACK, 0, wlog.fileno())
    port = free_port()
    slog = open(server_log, "wb")  # noqa: SIM115 - kept open for the child's life
    server = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "serve", "--host", LOOPBACK, "--port", str(port),
         "--secret", secret, "--admin-token", admin, "--engine", "workers",
         "--worker", worker.address, "--connect-timeout", str(connect_timeout),
         "--demo-tokens", "yes", *extra_serve_flags],
        stdout=subprocess.DEVNULL, stderr=slog, env=_env())
    system = LiveSystem(server, worker, port, int(worker.address.rsplit(":", 1)[1]),
                        metrics_port, secret, admin, media_host, server_log, worker_log)
    system.session = aiohttp.ClientSession()
    try:
        deadline = time.monotonic() + 120
        while await system.healthz(2.0) is None:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited ({server.returncode}):\n"
                                   + server_log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /healthz in 120 s")
            await asyncio.sleep(0.3)
        yield system
    finally:
        await system.session.close()
        if server.poll() is None:
            server.terminate()
            try:
                await asyncio.to_thread(server.wait, 30)
            except subprocess.TimeoutExpired:
                server.kill()
        slog.close()
        await asyncio.to_thread(worker.stop)
