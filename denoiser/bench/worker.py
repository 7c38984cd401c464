"""`denoise-sfu bench worker`: what moving the engine into a worker process does to the hops.

The same paced load (N streams, one 20 ms frame each per period at random phases) goes to the
engine in this process and to a `denoise-sfu worker` child on this machine, with the event
loop idle and then busy: a task that runs Python in slices of about a millisecond, yielding
between them, the way a loaded SFU's loop runs packet after packet. The in-process engine's
thread then has to win the GIL back from the loop after every release; the worker has its
own. Each hop's round trip is timed from `process` to its answer; the share answered within
the SFU's hop deadline (20 ms) is the share that would go out denoised. The worker's CPU is
read from /proc. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from denoiser.engine import Engine
from denoiser.worker.spawn import cpu_seconds, spawn_worker

HOP_DEADLINE_MS = 20.0
TAIL_SECONDS = 2.0


def register_bench_worker(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("worker", help="the engine in-process vs in a worker process",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=8, help="paced streams (default 8)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each paced run")
    p.add_argument("--threads", type=int, default=1, help="torch threads of either engine")
    p.add_argument("--frame-hops", type=int, default=2, help="hops per request (20 ms: 2)")
    p.add_argument("--busy", choices=("both", "no", "yes"), default="both",
                   help="runs with the event loop idle and/or busy (default both)")
    p.add_argument("--busy-slice-ms", type=float, default=1.0,
                   help="Python work per turn of the busy loop (default 1 ms)")
    p.add_argument("--model", choices=("default", "identity"), default="default",
                   help="identity: measure the worker's host path alone (a model that returns "
                        "its input; stream-frames per second per worker core)")
    from denoiser.bench.worker_host import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)
    return p


async def paced(engine: Engine, streams: int, seconds: float, frame_hops: int,
                busy: bool = False, busy_slice_ms: float = 1.0, seed: int = 0
                ) -> dict[str, Any]:
    """Round trips (ms) of the requests of `streams` paced streams, the loop busy or not.

    Requests still unanswered `TAIL_SECONDS` after the last one was sent count as failed."""
    loop = asyncio.get_running_loop()
    period = frame_hops * engine.hop_size / engine.sample_rate
    ids = [f"bench{i}" for i in range(streams)]
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal((streams, frame_hops * engine.hop_size)) * 0.05
             ).astype(np.float32)
    waits: list[float] = []
    outcomes: Counter[str] = Counter()
    pending: set[asyncio.Task[None]] = set()

    async def request(i: int, sent: float) -> None:
        try:
            await engine.process(ids[i], audio[i])
        except Exception:
            outcomes["failed"] += 1
        else:
            waits.append((loop.time() - sent) * 1e3)

    async def pace(i: int, start: float, end: float) -> None:
        due = start
        while due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.ensure_future(request(i, loop.time()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            due += period

    for sid in ids:
        engine.open_stream(sid)
    try:
        for _ in range(3):  # warm-up, with the loop idle
            await asyncio.gather(*(engine.process(s, audio[i]) for i, s in enumerate(ids)))
        async with busy_event_loop(busy, busy_slice_ms):
            start = loop.time() + 0.05
            phases = rng.uniform(0, period, streams)
            await asyncio.gather(*(pace(i, start + phases[i], start + seconds)
                                   for i in range(streams)))
            if pending:
                await asyncio.wait(set(pending), timeout=TAIL_SECONDS)
        outcomes["unanswered"] = len(pending)
    finally:
        for sid in ids:
            engine.close_stream(sid)  # fails what is still queued
        if pending:
            await asyncio.wait(set(pending))
    arr = np.asarray(waits) if waits else np.asarray([np.nan])
    sent = len(waits) + outcomes["failed"]
    return {"requests": sent, "requests_failed": outcomes["failed"],
            "unanswered_at_end": outcomes["unanswered"],
            "wait_p50_ms": round(float(np.percentile(arr, 50)), 2),
            "wait_p99_ms": round(float(np.percentile(arr, 99)), 2),
            "within_deadline": round(float(np.sum(arr <= HOP_DEADLINE_MS)) / max(sent, 1), 4)}


@contextlib.asynccontextmanager
async def busy_event_loop(enabled: bool, slice_ms: float = 1.0) -> AsyncIterator[None]:
    """Keep the event loop busy: Python work in slices of `slice_ms`, yielding between."""
    if not enabled:
        yield
        return

    async def spin() -> None:
        while True:
            until = time.perf_counter() + slice_ms / 1e3
            while time.perf_counter() < until:
                sum(range(200))
            await asyncio.sleep(0)

    task = asyncio.create_task(spin(), name="busy-loop")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from denoiser.engine.local import LocalEngine
    from denoiser.model.weights import load_default_model
    from denoiser.worker.client import RemoteEngine

    torch.set_num_threads(args.threads)
    worker = spawn_worker(["--device", "cpu", "--threads", str(args.threads),
                           "--max-streams", str(args.streams), "--log-format", "text"],
                          stderr=None)  # its logs here: nobody reads a pipe during the run
    print(f"worker process {worker.proc.pid} at {worker.address}", file=sys.stderr)
    local = LocalEngine(load_default_model("cpu"), device="cpu", max_streams=args.streams)
    remote = RemoteEngine(worker.address, node="bench")
    runs = []
    try:
        await local.start()
        await remote.start()
        for busy in {"both": (False, True), "no": (False,), "yes": (True,)}[args.busy]:
            for name, engine in (("local", local), ("worker", remote)):
                cpu0, worker0, wall0 = time.process_time(), cpu_seconds(worker.proc.pid), \
                    time.monotonic()
                result = await paced(engine, args.streams, args.seconds, args.frame_hops, busy,
                                     args.busy_slice_ms)
                wall = time.monotonic() - wall0
                result |= {"engine": name, "busy_loop": busy,
                           "this_process_cpu_pct": round(
                               100 * (time.process_time() - cpu0) / wall, 1),
                           "worker_cpu_pct": round(
                               100 * (cpu_seconds(worker.proc.pid) - worker0) / wall, 1)}
                print(f"{name:>6}{', busy loop' if busy else ', idle loop':11}: hop round trip p50 "
                      f"{result['wait_p50_ms']} ms, p99 {result['wait_p99_ms']} ms, "
                      f"{100 * result['within_deadline']:.1f} % within "
                      f"{HOP_DEADLINE_MS:g} ms, failed {result['requests_failed']} of "
                      f"{result['requests']}; CPU here "
                      f"{result['this_process_cpu_pct']} %, worker {result['worker_cpu_pct']} %",
                      file=sys.stderr)
                runs.append(result)
    finally:
        await remote.close()
        await local.close()
        worker.stop()
    summary: dict[str, Any] = {"bench": "worker", "streams": args.streams,
                               "seconds": args.seconds, "threads": args.threads,
                               "busy_slice_ms": args.busy_slice_ms, "runs": runs}
    for busy in (False, True):
        pair = {r["engine"]: r for r in runs if r["busy_loop"] is busy}
        if len(pair) == 2:
            key = "busy" if busy else "idle"
            summary[f"{key}_p99_ms_local"] = pair["local"]["wait_p99_ms"]
            summary[f"{key}_p99_ms_worker"] = pair["worker"]["wait_p99_ms"]
            summary[f"{key}_within_deadline_local"] = pair["local"]["within_deadline"]
            summary[f"{key}_within_deadline_worker"] = pair["worker"]["within_deadline"]
    return summary


def run(args: argparse.Namespace) -> int:
    if args.model == "identity":
        from denoiser.bench import worker_host

        if args.streams == 8:  # the paced bench's default: the host path needs a crowd
            args.streams = 10_000
        return worker_host.run(args)
    if args.streams < 1 or args.seconds <= 0 or args.threads < 1 or args.frame_hops < 1:
        print("error: --streams, --seconds, --threads and --frame-hops must be positive",
              file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(_bench(args))))
    return 0
