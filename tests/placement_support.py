"""Real processes for the placement tests: a `redis-server` on a free loopback port, SFU nodes
(`denoise-sfu serve --redis`) and workers (`denoise-sfu worker --redis`)."""

from __future__ import annotations

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

import pytest

ADMIN_TOKEN = "admin-test-token"


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


def start_node(tmp: Path, name: str, host: str, redis_url: str, secret: str,
               flags: Sequence[str] = (), wait: float = 60) -> Node:
    """`denoise-sfu serve --redis` on a free port, once its /healthz answers."""
    port = free_port(host)
    url = f"http://{host}:{port}"
    log_path = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "serve", "--host", host, "--port", str(port),
         "--public-url", url, "--redis", redis_url, "--secret", secret, "--node-id", name,
         "--admin-token", ADMIN_TOKEN, *flags],
        stdout=subprocess.DEVNULL, stderr=log_path.open("w"), text=True, env=clean_env())
    node = Node(proc, log_path, url=url)
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"node {name} exited ({proc.returncode}):\n{node.logs()}")
        try:
            status, _body = node.get("/readyz", timeout=2)
            if status == 200:
                return node
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            node.stop(signal.SIGKILL)
            raise RuntimeError(f"node {name} never became ready:\n{node.logs()}")
        time.sleep(0.2)


def start_worker(tmp: Path, name: str, redis_url: str, secret: str,
                 flags: Sequence[str] = ()) -> Proc:
    """`denoise-sfu worker --redis` on a free loopback port, once it listens."""
    log_path = tmp / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "worker", "--listen", "127.0.0.1:0",
         "--redis", redis_url, "--secret", secret, "--worker-id", name, "--device", "cpu",
         "--threads", "1", *flags],
        stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True, env=clean_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise RuntimeError(f"worker {name} exited ({proc.returncode}):\n"
                           f"{log_path.read_text()}")
    return Proc(proc, log_path, json.loads(line))
