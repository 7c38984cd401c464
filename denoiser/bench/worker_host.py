"""`denoise-sfu bench worker --model identity`: the worker's host path alone, per core.

A worker child (the real `WorkerServer` and `LocalEngine`, with `IdentityModel`, which returns
its input) is pinned to its own CPUs; this process, on the others, plays SFU nodes that hold
`--streams` streams and send every stream's 20 ms frame in as few TICKs as the protocol's
bounds allow, `--inflight` rounds ahead, as fast as the answers come back. Every RESULT is
checked against what was sent (the identity model must give the input back, bit for bit).
What it measures: stream-frames answered per CPU-second of the worker process (user + system,
from /proc), i.e. the Python, numpy and kernel work per stream-frame that a GPU worker pays
around its model. Both wire layouts run in one invocation (`--protocols 2,1`), so their
ratio comes from one run. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from denoiser.worker import protocol as wire
from denoiser.worker.bulk import encode_bulk_tick
from denoiser.worker.handshake import greet
from denoiser.worker.spawn import _die_with_parent

FRAME = 960
SEQ_AT = wire.HEADER.size  # the seq is the first field of a TICK's payload in both layouts


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def parse_cpus(text: str | None) -> set[int] | None:
    """`0`, `0,1` or `0-3` -> a CPU set (None: leave the affinity alone)."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


# -- the worker child -------------------------------------------------------------------------

async def _serve(args: argparse.Namespace) -> None:
    from denoiser.engine.local import LocalEngine
    from denoiser.model.identity import IdentityModel
    from denoiser.worker.server import WorkerServer

    engine = LocalEngine(IdentityModel(), device="cpu", max_streams=args.max_streams,
                         tick_deadline=args.tick_deadline, initial_slots=args.max_streams)
    await engine.start()
    server = WorkerServer(engine, "127.0.0.1", 0, description="identity")
    await server.start()
    print(json.dumps({"port": server.port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await server.close()
    await engine.close()


def _spawn(max_streams: int, cpus: set[int] | None, tick_deadline: float
           ) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "denoiser.bench.worker_host", "--max-streams",
           str(max_streams), "--tick-deadline", str(tick_deadline)]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env, preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the identity worker exited ({proc.wait()}) before listening")
    return proc, int(json.loads(line)["port"])


# -- the node side (this process) --------------------------------------------------------------

def _ticks(version: int, streams: int, chunk: int, audio: np.ndarray, flags: int
           ) -> list[bytearray]:
    """One round: every stream's frame, in TICKs of at most `chunk` entries."""
    out = []
    for start in range(0, streams, chunk):
        ids = range(start, min(streams, start + chunk))
        if version == wire.BULK_LAYOUT:
            n = len(ids)
            message = encode_bulk_tick(0, np.arange(start, start + n, dtype=np.uint32),
                                       np.full(n, FRAME, np.uint32),
                                       np.full(n, flags, np.uint8),
                                       audio[start:start + n].reshape(-1))
        else:
            message = wire.encode_tick(0, [wire.TickEntry(f"s{i}", wire.Flags(flags), audio[i])
                                           for i in ids])
        out.append(bytearray(message))
    return out


def _sample_bytes(version: int, message: bytes | bytearray, entries: int) -> bytes:
    """The samples of a bulk TICK or RESULT (everything after the columns)."""
    n = entries
    start = wire.HEADER.size + 8 + 9 * n + (-n % 4)
    return bytes(message[start:start + 4 * FRAME * n])


async def _drive(port: int, version: int, streams: int, chunk: int, inflight: int,
                 seconds: float, pid: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await greet(reader, writer, "bench", None, version)  # `version`: the TICK/RESULT layout
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((streams, FRAME)) * 0.05).astype(np.float32)
    opening = _ticks(version, streams, chunk, audio, int(wire.Flags.OPEN))
    steady = _ticks(version, streams, chunk, audio, int(wire.Flags.NONE))
    expected = [_sample_bytes(version, m, min(chunk, streams - i * chunk))
                for i, m in enumerate(steady)] if version == wire.BULK_LAYOUT else []
    seq = 0
    pending: dict[int, int] = {}  # seq -> which TICK of the round
    frames = mismatches = 0

    def send(round_ticks: list[bytearray]) -> None:
        nonlocal seq
        for i, message in enumerate(round_ticks):
            seq += 1
            struct.pack_into("<I", message, SEQ_AT, seq)
            pending[seq] = i
            writer.write(message)

    async def receive() -> None:
        nonlocal frames, mismatches
        kind, payload = await wire.read_message(reader)
        if kind is not wire.MessageType.RESULT:
            raise RuntimeError(f"the worker sent {kind.name}: {payload[:200]!r}")
        (got_seq,) = struct.unpack_from("<I", payload)
        which = pending.pop(got_seq)
        n = min(chunk, streams - which * chunk)
        if version == wire.BULK_LAYOUT:
            # The identity model gives the input back: the RESULT's samples are the TICK's.
            header = wire.HEADER.pack(wire.MAGIC, wire.PROTOCOL_VERSION, wire.MessageType.RESULT,
                                      len(payload))
            if _sample_bytes(version, header + payload, n) != expected[which]:
                mismatches += 1
        else:
            entries = wire.decode_result(payload)[1]
            if any(e.status is not wire.Status.OK for e in entries):
                mismatches += 1
        frames += n

    send(opening)
    for _ in range(len(opening)):
        await receive()
    frames = 0
    for _ in range(inflight - 1):
        send(steady)
    loop = asyncio.get_running_loop()
    user0, sys0 = cpu_split(pid)
    here0, wall0 = time.process_time(), loop.time()
    rounds = 0

    async def send_rounds() -> None:
        # Writing and reading run side by side: a worker whose RESULTs nobody reads stops
        # reading TICKs (both sides' socket buffers fill).
        while loop.time() - wall0 < seconds:
            await done_round.get()
            send(steady)
            await writer.drain()

    done_round: asyncio.Queue[None] = asyncio.Queue()
    done_round.put_nowait(None)
    sender = asyncio.create_task(send_rounds())
    while not (sender.done() and len(pending) <= len(steady) * (inflight - 1)):
        for _ in range(len(steady)):
            await receive()
        rounds += 1
        done_round.put_nowait(None)
    await sender
    wall = loop.time() - wall0
    user, system = (a - b for a, b in zip(cpu_split(pid), (user0, sys0), strict=True))
    here = time.process_time() - here0
    while pending:
        await receive()
    writer.close()
    worker_cpu = user + system
    return {"protocol": version, "streams": streams, "entries_per_tick": min(chunk, streams),
            "rounds": rounds, "stream_frames": frames, "seconds": round(wall, 2),
            "mismatches": mismatches,
            "stream_frames_per_s": round(frames / wall),
            "worker_cpu_pct": round(100 * worker_cpu / wall, 1),
            "worker_user_s": round(user, 2), "worker_system_s": round(system, 2),
            "node_cpu_pct": round(100 * here / wall, 1),
            "stream_frames_per_s_per_core": round(frames / max(worker_cpu, 1e-9)),
            "us_per_stream_frame": round(1e6 * worker_cpu / max(frames, 1), 3)}


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    worker_cpus, node_cpus = parse_cpus(args.worker_cpus), parse_cpus(args.node_cpus)
    if node_cpus:
        os.sched_setaffinity(0, node_cpus)
    runs = []
    for version in args.protocols:
        chunk = args.entries_per_tick or (2000 if version == wire.BULK_LAYOUT else
                                          min(wire.MAX_ENTRIES, 2000))
        proc, port = _spawn(args.streams, worker_cpus, args.tick_deadline)
        try:
            result = await _drive(port, version, args.streams, chunk, args.inflight,
                                  args.seconds, proc.pid)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"protocol {version}: {result['stream_frames_per_s_per_core']:,} stream-frames "
              f"per worker CPU-second ({result['us_per_stream_frame']} us each; worker CPU "
              f"{result['worker_cpu_pct']} %, {result['stream_frames_per_s']:,}/s wall), "
              f"{result['mismatches']} mismatched RESULTs", file=sys.stderr)
        runs.append(result)
    summary: dict[str, Any] = {"bench": "worker", "model": "identity", "streams": args.streams,
                               "worker_cpus": args.worker_cpus, "node_cpus": args.node_cpus,
                               "runs": runs}
    by = {r["protocol"]: r for r in runs}
    for version, r in by.items():
        summary[f"stream_frames_per_s_per_core_v{version}"] = r["stream_frames_per_s_per_core"]
    if 1 in by and 2 in by:
        summary["bulk_speedup"] = round(by[2]["stream_frames_per_s_per_core"]
                                        / max(by[1]["stream_frames_per_s_per_core"], 1), 1)
    summary["mismatches"] = sum(r["mismatches"] for r in runs)
    return summary


def run(args: argparse.Namespace) -> int:
    if args.streams < 1 or args.seconds <= 0 or args.inflight < 1:
        print("error: --streams, --seconds and --inflight must be positive", file=sys.stderr)
        return 2
    summary = asyncio.run(_bench(args))
    print(json.dumps(summary))
    return 0 if summary["mismatches"] == 0 else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `bench worker --model identity` adds to `bench worker`'s."""
    p.add_argument("--protocols", type=lambda s: [int(x) for x in s.split(",")],
                   default=[2, 1], help="identity: wire layouts to run, in order (default 2,1)")
    p.add_argument("--inflight", type=int, default=2,
                   help="identity: rounds of TICKs in flight (default 2)")
    p.add_argument("--entries-per-tick", type=int, default=None,
                   help="identity: entries per TICK (default 2000, within the 8 MiB bound)")
    p.add_argument("--worker-cpus", default=None,
                   help="identity: CPUs of the worker child, e.g. 0 (taskset)")
    p.add_argument("--node-cpus", default=None, help="identity: CPUs of this process, e.g. 1")
    p.add_argument("--tick-deadline", type=float, default=0.004,
                   help="identity: the worker engine's tick deadline (seconds)")


def _main() -> None:
    p = argparse.ArgumentParser(description="the identity worker child of bench worker")
    p.add_argument("--max-streams", type=int, required=True)
    p.add_argument("--tick-deadline", type=float, default=0.004)
    asyncio.run(_serve(p.parse_args()))


if __name__ == "__main__":
    _main()
