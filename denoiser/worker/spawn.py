"""Start `denoise-sfu worker` as a child process on this machine (for benchmarks and tests).

The worker prints one JSON line on stdout when it listens; `spawn_worker` waits for it and
returns the process and its address. `cpu_seconds` reads a process's CPU time from /proc, so
a benchmark can count the worker's CPU beside its own.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


@dataclass
class SpawnedWorker:
    proc: subprocess.Popen[str]
    address: str
    ready: dict[str, object]

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, wait, and return what it logged on stderr (if it was kept)."""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


def spawn_worker(flags: Sequence[str] = (), env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 stderr: int | None = subprocess.PIPE) -> SpawnedWorker:
    """`denoise-sfu worker --listen HOST:PORT FLAGS...` (port 0: a free one), once it listens
    (RuntimeError if it exits first). Its logs are kept for `stop()` (`stderr=PIPE`, for
    short runs: nobody reads the pipe before then) or go to this process's stderr (None)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "worker", "--listen", f"{host}:{port}", *flags],
        stdout=subprocess.PIPE, stderr=stderr, text=True,
        env=dict(os.environ) if env is None else env, preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise RuntimeError(f"the worker exited ({proc.returncode}) before listening:\n{err}")
    ready = json.loads(line)
    return SpawnedWorker(proc, f"{host}:{ready['port']}", ready)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (a benchmark
    killed mid-run must not leave a worker behind). Linux means the parent *thread*: spawn
    from a thread that outlives the worker (the main thread, or an executor's)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
