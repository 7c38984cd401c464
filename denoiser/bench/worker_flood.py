"""A good node's round trips to a worker, with and without a flood of bad connections.

    python -m denoiser.bench.worker_flood [--seconds 10] [--flooders 8] [--streams 2]

Starts `denoise-sfu worker` (the shipped model, on CPU, with a secret) as a child. A good node
(`RemoteEngine`, in this process) sends every stream's 20 ms frame every 20 ms and times each
request from `process` to its answer: first with no flood, then while a flood process keeps
`--flooders` connections busy at once, each over and over: a HELLO that declares 8 MiB and
sends it, a handshake with a wrong answer, garbage, a connection that says nothing. Prints one
JSON line: p50/p99/max of both phases, the worker's CPU seconds in each, and how many bad
connections the flood made. Loopback only; the flood runs in its own process, so it takes CPU
as a real attacker's packets would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from denoiser.worker import protocol as wire
from denoiser.worker.spawn import cpu_seconds, spawn_worker

SECRET = "flood-bench-secret"
FRAME = 960


def _bad_messages() -> list[bytes]:
    version = int(getattr(wire, "PROTOCOL_VERSION", getattr(wire, "VERSION", 1)))
    big = wire.HEADER.pack(wire.MAGIC, version, wire.MessageType.HELLO, wire.MAX_PAYLOAD)
    if hasattr(wire, "encode_auth"):  # protocol 3: a HELLO, then a wrong answer
        wrong = wire.encode_hello("flood") + wire.encode_auth(os.urandom(wire.MAC_BYTES))
    else:  # protocol 1/2: a HELLO with a wrong token
        token = f"{int(time.time())}:{'0' * 64}"
        wrong = wire.encode_hello("flood", token)  # type: ignore[arg-type]
    return [big, wrong, os.urandom(64), b""]


async def _flood_one(host: str, port: int, kind: int, counts: list[int]) -> None:
    messages = _bad_messages()
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        counts[0] += 1
        try:
            writer.write(messages[kind])
            if kind == 0:  # the 8 MiB it declared
                for _ in range(8):
                    writer.write(bytes(1 << 20))
                    await writer.drain()
            await asyncio.wait_for(reader.read(), 10)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _flood(address: str, flooders: int, seconds: float) -> None:
    host, _, port = address.rpartition(":")
    counts = [0]
    tasks = [asyncio.create_task(_flood_one(host, int(port), i % 4, counts))
             for i in range(flooders)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    print(json.dumps({"connections": counts[0]}), flush=True)


async def _phase(node: Any, streams: int, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((streams, FRAME)) * 0.05).astype(np.float32)
    times: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.process(f"s{i}", frames[i]), 2.0)
            times.append((time.perf_counter() - start) * 1e3)

    end = loop.time() + seconds
    tick = loop.time()
    pending: set[asyncio.Task[None]] = set()
    while loop.time() < end:
        pending |= {asyncio.create_task(one(i)) for i in range(streams)}
        pending = {t for t in pending if not t.done()}
        tick += 0.020
        await asyncio.sleep(max(0.0, tick - loop.time()))
    await asyncio.gather(*pending)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    data = np.array(times) if times else np.zeros(1)
    return {"requests": len(times), "p50_ms": round(float(np.percentile(data, 50)), 1),
            "p99_ms": round(float(np.percentile(data, 99)), 1),
            "max_ms": round(float(data.max()), 1)}


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from denoiser.worker.client import RemoteEngine

    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    worker = spawn_worker(["--device", "cpu", "--max-streams", str(max(4, args.streams)),
                           "--secret", SECRET, "--log-format", "text"], env=env,
                          stderr=subprocess.DEVNULL)
    node = RemoteEngine(worker.address, node="good", secret=SECRET)
    try:
        await node.start()
        for i in range(args.streams):
            node.open_stream(f"s{i}")
        await _phase(node, args.streams, 2.0)  # warm
        pid = worker.proc.pid
        cpu = cpu_seconds(pid)
        quiet = _summary(await _phase(node, args.streams, args.seconds))
        quiet["worker_cpu_s"] = round(cpu_seconds(pid) - cpu, 2)
        flood = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--flood-only",
             worker.address, "--flooders", str(args.flooders), "--seconds",
             str(args.seconds + 1)], stdout=subprocess.PIPE, text=True, env=env)
        await asyncio.sleep(0.5)
        cpu = cpu_seconds(pid)
        flooded = _summary(await _phase(node, args.streams, args.seconds))
        flooded["worker_cpu_s"] = round(cpu_seconds(pid) - cpu, 2)
        out, _ = flood.communicate(timeout=60)
        made = json.loads(out.strip().splitlines()[-1])["connections"] if out.strip() else 0
    finally:
        await node.close()
        worker.stop()
    return {"bench": "worker_flood", "streams": args.streams, "seconds": args.seconds,
            "flooders": args.flooders, "bad_connections": made, "quiet": quiet,
            "flood": flooded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m denoiser.bench.worker_flood")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--flooders", type=int, default=8)
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--flood-only", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.flood_only:
        asyncio.run(_flood(args.flood_only, args.flooders, args.seconds))
        return 0
    print(json.dumps(asyncio.run(_bench(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
