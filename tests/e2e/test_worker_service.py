"""`denoise-sfu worker` as its own process with the shipped model, and an SFU whose engine is
that worker (`--engine workers`): a real aiortc peer publishes noisy speech over WHIP, a WHEP
subscriber hears it denoised, and both processes' `/metrics` count the hops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from denoiser.engine.local import LocalEngine
from denoiser.model.weights import load_default_model
from denoiser.worker.client import RemoteEngine
from denoiser.worker.pool import WorkerPool
from denoiser.worker.spawn import spawn_worker
from sfu.bench.e2e import hop_counters, run_clip
from support.audio import (
    assert_denoised,
    assert_heard_whole_clip,
    assert_untouched,
    noisy_test_clip,
    report,
)
from support.sfu import SfuFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
SECRET = "worker-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in:\n{text}"
    return float(found.group(1))


@dataclass
class WorkerProcess:
    address: str
    metrics_url: str


@pytest.fixture(scope="module")
def worker_process() -> Iterator[WorkerProcess]:
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    worker = spawn_worker(["--device", "cpu", "--max-streams", "4", "--secret", SECRET,
                           "--metrics", f"127.0.0.1:{metrics_port}"], env=env)
    try:
        assert worker.ready["traced"] is True and worker.ready["max_streams"] == 4
        assert worker.ready["secret"] is True
        yield WorkerProcess(worker.address, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        err = worker.stop()
    assert worker.proc.returncode == 0, err
    assert '"msg": "node connected"' in err and '"msg": "node disconnected"' in err


async def test_the_worker_process_denoises_as_the_engine_in_this_process(
        worker_process: WorkerProcess) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(48_000) / 48_000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.3) + 0.05 * rng.standard_normal(t.size))
    x = x.astype(np.float32)
    local = LocalEngine(load_default_model("cpu"), device="cpu", max_streams=1)
    remote = RemoteEngine(worker_process.address, node="test", secret=SECRET)
    await local.start()
    await remote.start()
    try:
        assert remote.latency_samples == local.latency_samples
        local.open_stream("s")
        remote.open_stream("s")
        ours, theirs = [], []
        for i in range(0, x.size, 960):
            ours.append(await local.process("s", x[i:i + 960]))
            theirs.append(await remote.process("s", x[i:i + 960]))
        ours_all, theirs_all = np.concatenate(ours), np.concatenate(theirs)
        assert np.abs(ours_all).max() > 0.05
        np.testing.assert_allclose(theirs_all, ours_all, atol=1e-4 * np.abs(ours_all).max())
    finally:
        await remote.close()
        await local.close()
    text = scrape(worker_process.metrics_url)
    assert metric(text, "denoise_sfu_engine_hops_total") >= 100
    assert metric(text, 'denoise_sfu_worker_entries_total{status="ok"}') >= 50


async def test_an_sfu_denoises_through_the_worker_process(sfu_factory: SfuFactory,
                                                          worker_process: WorkerProcess) -> None:
    pool = WorkerPool([worker_process.address], node="sfu-under-test", secret=SECRET)
    await pool.start()
    try:
        clip = noisy_test_clip(snr_db=5.0, lead_s=1.5)
        # Mode off re-encoded (not forwarded): the fair SI-SDR reference for the denoised
        # audio, through the same two Opus passes (tests/e2e/test_e2e_denoise.py says why).
        sfu = await sfu_factory(pool, forward_mode_off=False)
        off = await run_clip(sfu, clip, "off", room="worker-off")
        print(report(off))
        assert_untouched(off)
        on = await run_clip(sfu, clip, "on", room="worker-on")
        print(report(on))
        assert_denoised(on, off)
        async with sfu.session.get(sfu.url("/metrics")) as resp:
            node = await resp.text()
        label = f'{{worker="{worker_process.address}"}}'
        assert metric(node, "denoise_sfu_worker_connected" + label) == 1
        assert metric(node, "denoise_sfu_worker_hops_sent_total" + label) >= on.hops["denoised"]
        async with sfu.session.get(sfu.url("/healthz")) as resp:
            assert (await resp.json())["workers"] == {worker_process.address: "connected"}
    finally:
        await pool.close()
    worker = scrape(worker_process.metrics_url)
    assert metric(worker, "denoise_sfu_engine_hops_total") >= on.hops["denoised"]


def test_serve_stops_with_a_clear_error_when_no_worker_answers() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sfu.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--engine", "workers", "--worker", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "no worker could be reached" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 30


def test_bench_worker_ends_with_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    from sfu.cli import main

    assert main(["bench", "worker", "--streams", "2", "--seconds", "0.5", "--busy", "no"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "worker" and result["streams"] == 2
    assert [(r["engine"], r["busy_loop"]) for r in result["runs"]] == [
        ("local", False), ("worker", False)]
    for run in result["runs"]:
        assert run["requests"] >= 2 * 0.5 * 50 * 0.9 and run["requests_failed"] == 0, run
        assert 0 < run["wait_p50_ms"] <= run["wait_p99_ms"]
    assert result["runs"][1]["worker_cpu_pct"] > 0  # the engine's work happened over there


async def test_a_call_outlives_its_worker_crashing_and_coming_back(
        sfu_factory: SfuFactory) -> None:
    """The worker is killed (SIGKILL) in the middle of a call and started again on its port:
    the listener hears the whole clip, the hops in between go out raw (counted engine_error),
    and denoising resumes on the new worker with fresh state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    flags = ["--device", "cpu", "--max-streams", "4"]
    first = spawn_worker(flags, env=env)
    port = int(first.address.rsplit(":", 1)[1])
    pool = WorkerPool([first.address], node="sfu-under-test", max_backoff=0.5)
    await pool.start()
    second = None
    try:
        sfu = await sfu_factory(pool)
        clip = noisy_test_clip(snr_db=5.0, lead_s=4.0)
        call = asyncio.create_task(run_clip(sfu, clip, "on", room="crash"))
        await asyncio.sleep(3.0)
        before_crash = await hop_counters(sfu)
        first.proc.kill()
        first.proc.wait()
        second = await asyncio.to_thread(spawn_worker, flags, env, "127.0.0.1", port)
        result = await call
        print(report(result))
    finally:
        await pool.close()
        first.stop()
        if second is not None:
            second.stop()
    assert_heard_whole_clip(result)
    assert result.hops["engine_error"] > 0, report(result)  # raw while no worker answered
    assert result.hops["denoised"] > before_crash["denoised"] + 100, report(result)  # resumed
    assert sum(result.hops.values()) == result.hops["denoised"] + result.hops["engine_error"] \
        + result.hops.get("late", 0), report(result)
    assert pool.workers[0].stats.connects == 2


def test_serve_starts_its_own_worker_when_none_is_named(host_ip: str) -> None:
    """`serve --engine workers` alone: the SFU starts `denoise-sfu worker` as its child,
    connects to it, and stops it when it stops."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu.cli", "serve", "--host", host_ip, "--port", str(port),
         "--engine", "workers", "--max-streams", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                health = json.loads(scrape(f"http://{host_ip}:{port}/healthz"))
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert health["engine"] == "ChildWorkerPool"
        ((address, state),) = health["workers"].items()
        assert state == "connected" and address.startswith("127.0.0.1:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert '"msg": "started a worker process"' in err and '"msg": "node connected"' in err
    worker_host, worker_port = address.rsplit(":", 1)
    with pytest.raises(OSError):  # the child is gone with its parent
        socket.create_connection((worker_host, int(worker_port)), timeout=2).close()
