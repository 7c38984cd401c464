"""`denoise-sfu bench engine`: how many real-time streams one core (or one GPU) denoises, batched.

Every request carries `--frame-hops` N hops of 10 ms (default 2: one 20 ms Opus frame, what the
SFU sends; 1 gives the figure of one hop per request), so a stream sends one request per
N x 10 ms, its `period`; the engine runs the N hops of a full tick as one `step_many` call on CPU
(`--no-multi-hop`: N calls of one hop, for comparison). The JSON says which (`frame_hops`).

1. Capacity search (unpaced): with B streams each sending its next request as soon as the last
   came back, every tick is a full batch of B; `tick(B)` is the wall time per tick. B streams
   run in real time when `tick(B) <= utilisation x period` (default 0.8 x 20 ms: a loop at
   100 % never catches up after jitter). Doubling then bisection finds the largest such B:
   `streams_per_core` (per GPU on CUDA). `capacity_streams_per_core` is the best `B * period /
   tick(B)` seen (throughput if latency did not matter); `single_stream_per_core` is `period /
   tick(1)`, comparable with the anchors. Each probe also takes the process's CPU time per
   tick (event loop and worker thread together: `cpu_ms_by_batch`); on a machine shared with
   other work, wall time counts the time others hold the core, so `--search-clock cpu` runs
   the search on CPU time instead: what one core of its own would carry (`search_clock`).
2. Paced run at that load (or `--streams N`): every stream sends one request per period at its
   own random phase, as calls do; reports tick p50/p99 (first hop of a tick in -> results out),
   each request's wait p50/p99, batch sizes, and whether the engine kept up.
3. Anchors, single stream, same process, same thread count: RNNoise and DFN3 (libdeepfilter)
   through `denoiser.eval.anchors`: seconds of audio per CPU second.

Torch runs on `--threads` threads (1 by default: per core). Ends with ONE JSON line.
`python -m denoiser.bench.engine [flags]` runs the same without the CLI's other commands (a GPU
box without the SFU's media packages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from denoiser.engine.capacity import resolve_device
from denoiser.engine.local import MAX_ROUNDS_PER_TICK, LocalEngine

PROBE_SECONDS = 0.6
TAIL_SECONDS = 2.0  # after the paced run, how long the last hops may take to come back


def register_bench_engine(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("engine", help="real-time streams per core/GPU, batched",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=None,
                   help="load for the paced run (default: the largest real-time batch found)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the paced run")
    p.add_argument("--model", default="default",
                   help="'default' (shipped DFN3), 'small' (the CPU rung, models/gtcrn48.pt), "
                        "a checkpoint (.pt) or module:factory returning a StreamingModel")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per core)")
    p.add_argument("--max-streams", type=int, default=None,
                   help="upper bound of the search (default 256 on CPU, 2048 on CUDA)")
    p.add_argument("--tick-deadline", type=float, default=0.004,
                   help="seconds a tick waits after its first hop (default 0.004)")
    p.add_argument("--utilisation", type=float, default=0.8,
                   help="largest share of each hop a tick may take to count as real time")
    p.add_argument("--half", action="store_true", help="float16 on CUDA")
    p.add_argument("--no-graphs", action="store_true", help="no CUDA graphs")
    p.add_argument("--anchors", action=argparse.BooleanOptionalAction, default=True,
                   help="also time RNNoise and DFN3 (libdeepfilter) single-stream")
    p.add_argument("--frame-hops", type=int, default=2,
                   help="hops of 10 ms per request (default 2: a 20 ms Opus frame, as the SFU "
                        "sends; 1: one hop per request)")
    p.add_argument("--multi-hop", action=argparse.BooleanOptionalAction, default=True,
                   help="on CPU, run a tick's frame as one step_many call (default) rather than "
                        "one call per hop")
    p.add_argument("--trace", action=argparse.BooleanOptionalAction, default=None,
                   help="on CPU, run the model's step traced (default: where the model allows "
                        "it) or eager (--no-trace)")
    p.add_argument("--busy-thread", action="store_true",
                   help="keep a Python thread busy beside the engine throughout (what a loaded "
                        "event loop costs it: the GIL)")
    p.add_argument("--search-clock", choices=("wall", "cpu"), default="wall",
                   help="what a probed tick must fit in the period by: its wall time "
                        "(default), or this process's CPU time per tick (a shared machine: "
                        "the figure for a core of its own)")
    p.add_argument("--probe-seconds", type=float, default=PROBE_SECONDS,
                   help=f"how long each batch size of the search is timed (default "
                        f"{PROBE_SECONDS:g})")
    p.set_defaults(func=run)


def _hops(n: int, hop: int, seed: int = 0) -> np.ndarray:
    """Noisy, speech-level test hops (the engine's cost does not depend on content)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, hop)) * 0.05).astype(np.float32)


def _engine(model: Any, args: argparse.Namespace, streams: int) -> LocalEngine:
    cpu = resolve_device(args.device).type == "cpu"
    return LocalEngine(model, device=args.device, max_streams=max(1, streams),
                       initial_slots=max(1, streams), tick_deadline=args.tick_deadline,
                       half=args.half, cuda_graphs=not args.no_graphs,
                       multi_hop=args.multi_hop if cpu else None,
                       trace=args.trace if cpu else None)


async def probe(model: Any, args: argparse.Namespace, batch: int
                ) -> tuple[float, float, float]:
    """Seconds per tick with `batch` streams always ready (every tick a full batch of one
    request of `args.frame_hops` hops per stream), the mean seconds of its forward part
    (the worker thread: copies, steps, and on CUDA the sync), and the process's CPU seconds
    per tick."""
    async with _engine(model, args, batch) as engine:
        ids = [f"s{i}" for i in range(batch)]
        for sid in ids:
            engine.open_stream(sid)
        hops = _hops(batch, engine.hop_size * args.frame_hops)

        async def round_() -> None:
            await asyncio.gather(*(engine.process(sid, hops[i]) for i, sid in enumerate(ids)))

        for _ in range(3):  # warm-up (and CUDA graph capture)
            await round_()
        forward_before = engine.stats.forward_ms.total
        rounds, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while rounds < 5 or (time.perf_counter() - start < args.probe_seconds
                             and rounds < 2000):
            await round_()
            rounds += 1
        tick = (time.perf_counter() - start) / rounds
        cpu = (time.process_time() - cpu_start) / rounds
        return tick, (engine.stats.forward_ms.total - forward_before) / 1e3 / rounds, cpu


async def search(model: Any, args: argparse.Namespace, period_s: float,
                 limit: int) -> tuple[int, dict[int, float], dict[int, float],
                                      dict[int, float]]:
    """Largest batch whose tick fits in one request period (`utilisation` of it, by
    `args.search_clock`), and every tick, forward and CPU time per tick measured."""
    ticks: dict[int, float] = {}
    forwards: dict[int, float] = {}
    cpus: dict[int, float] = {}
    clock = cpus if getattr(args, "search_clock", "wall") == "cpu" else ticks

    async def fits(b: int) -> bool:
        ticks[b], forwards[b], cpus[b] = await probe(model, args, b)
        print(f"  batch {b:5d}: {ticks[b] * 1e3:7.2f} ms/tick, forward "
              f"{forwards[b] * 1e3:7.2f} ms, CPU {cpus[b] * 1e3:7.2f} ms "
              f"({b * period_s / ticks[b]:.1f} streams of throughput)", file=sys.stderr)
        return clock[b] <= args.utilisation * period_s

    if not await fits(1):
        b = 2  # nothing is real time; still measure what batching buys in throughput
        while b <= min(limit, 64):
            await fits(b)
            b *= 4
        return 0, ticks, forwards, cpus
    good = 1
    while good < limit:
        nxt = min(2 * good, limit)
        if not await fits(nxt):
            bad = nxt
            break
        good = nxt
    else:
        return good, ticks, forwards, cpus
    while bad - good > 1 and (bad - good) > good // 16:  # ~6 % resolution is enough
        mid = (good + bad) // 2
        if await fits(mid):
            good = mid
        else:
            bad = mid
    return good, ticks, forwards, cpus


async def paced(model: Any, args: argparse.Namespace, streams: int) -> dict[str, Any]:
    """`streams` calls, one request of `args.frame_hops` hops each per period at random phases,
    for `args.seconds`."""
    loop = asyncio.get_running_loop()
    async with _engine(model, args, streams) as engine:
        period_s = args.frame_hops * engine.hop_size / engine.sample_rate
        ids = [f"s{i}" for i in range(streams)]
        for sid in ids:
            engine.open_stream(sid)
        hops = _hops(streams, engine.hop_size * args.frame_hops, seed=1)
        for _ in range(3):
            await asyncio.gather(*(engine.process(s, hops[i]) for i, s in enumerate(ids)))
        engine.stats.tick_ms.recent.clear()
        engine.stats.forward_ms.recent.clear()
        engine.stats.batch_sizes.clear()
        ticks_before = engine.stats.ticks
        waits: list[float] = []
        failures = 0
        inflight: set[asyncio.Task[np.ndarray]] = set()
        phases = np.random.default_rng(2).uniform(0, period_s, streams)
        start = loop.time() + 0.05
        end = start + args.seconds

        def done(task: asyncio.Task[np.ndarray], sent: float) -> None:
            nonlocal failures
            inflight.discard(task)
            if task.cancelled() or task.exception() is not None:
                failures += 1
            else:
                waits.append((loop.time() - sent) * 1e3)

        async def call(i: int) -> int:
            due, sent = start + phases[i], 0
            while due < end:
                await asyncio.sleep(max(0.0, due - loop.time()))
                now = loop.time()
                task = asyncio.ensure_future(engine.process(ids[i], hops[i]))
                inflight.add(task)
                task.add_done_callback(functools.partial(done, sent=now))
                sent += args.frame_hops
                due += period_s
            return sent

        sent = sum(await asyncio.gather(*(call(i) for i in range(streams))))
        backlog = len(inflight)
        if inflight:
            await asyncio.wait(inflight, timeout=TAIL_SECONDS)
        stats = engine.stats
        batches = np.repeat(list(stats.batch_sizes), list(stats.batch_sizes.values()))
        wait_arr = np.asarray(waits) if waits else np.asarray([math.nan])
        return {
            "streams": streams, "hops_sent": sent, "hops_failed": failures,
            "backlog_at_end": backlog, "ticks": stats.ticks - ticks_before,
            "tick_p50_ms": round(stats.tick_ms.percentile(50), 3),
            "tick_p99_ms": round(stats.tick_ms.percentile(99), 3),
            "hop_wait_p50_ms": round(float(np.percentile(wait_arr, 50)), 3),
            "hop_wait_p99_ms": round(float(np.percentile(wait_arr, 99)), 3),
            "batch_mean": round(float(batches.mean()), 2) if batches.size else 0.0,
            "forward_p50_ms": round(stats.forward_ms.percentile(50), 3),
            "forward_p99_ms": round(stats.forward_ms.percentile(99), 3),
            "kept_up": bool(backlog <= streams and failures == 0
                            and np.percentile(wait_arr, 99) <= 2 * period_s * 1e3),
            # On CUDA: whether the graphs asked for were really used (capture can fall back).
            "graphs_used": bool(engine.use_graphs), "graph_error": engine.graph_error,
        }


def anchor_streams_per_core(name: str, seconds: float) -> float | None:
    """Audio seconds one CPU second denoises with an anchor, single stream (None: unavailable)."""
    try:
        from denoiser.eval.anchors import AnchorError, make_anchor
    except ImportError as exc:
        print(f"  anchor {name}: unavailable ({exc})", file=sys.stderr)
        return None
    try:
        anchor = make_anchor(name)
    except (AnchorError, OSError) as exc:
        print(f"  anchor {name}: unavailable ({exc})", file=sys.stderr)
        return None
    with anchor:
        frames = max(10, int(seconds * anchor.sample_rate / anchor.frame_size))
        audio = _hops(frames, anchor.frame_size, seed=3)
        for frame in audio[:5]:
            anchor.process_frame(frame)
        cpu0 = time.process_time()
        for frame in audio:
            anchor.process_frame(frame)
        cpu = time.process_time() - cpu0
    audio_s = frames * anchor.frame_size / anchor.sample_rate
    value = audio_s / cpu if cpu > 0 else math.inf
    print(f"  anchor {name}: {value:.1f} streams per core ({audio_s:.1f} s audio in "
          f"{cpu:.2f} CPU s)", file=sys.stderr)
    return round(value, 2)


@contextlib.contextmanager
def busy_python_thread(enabled: bool = True) -> Iterator[None]:
    """A thread that runs Python bytecode nonstop while the block runs: it holds the GIL as a
    busy event loop would, so the engine's worker thread must win it back after every release."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, name="busy-python", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from denoiser.model.weights import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    device = resolve_device(args.device)
    limit = args.max_streams or (2048 if device.type == "cuda" else 256)
    period_s = args.frame_hops * model.hop_size / model.sample_rate
    multi_hop = args.multi_hop and device.type == "cpu"
    print(f"bench engine: {type(model).__name__} on {device}, {args.threads} torch thread(s), "
          f"{args.frame_hops} hop(s) per request ({period_s * 1e3:g} ms), multi-hop calls "
          f"{'on' if multi_hop else 'off'}", file=sys.stderr)
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"half={bool(args.half)}, graphs={not args.no_graphs}", file=sys.stderr)
    traced = device.type == "cpu" and bool(getattr(model, "traceable", False)
                                         if args.trace is None else args.trace)
    print(f"step {'traced' if traced else 'eager'}"
          f"{', a busy Python thread beside it' if args.busy_thread else ''}", file=sys.stderr)
    with busy_python_thread(args.busy_thread):
        best, ticks, forwards, cpus = await search(model, args, period_s, limit)
        load = args.streams if args.streams is not None else max(1, best)
        print(f"paced run: {load} streams for {args.seconds:g} s", file=sys.stderr)
        run_stats = await paced(model, args, load)
    capacity = max(b * period_s / t for b, t in ticks.items())
    result: dict[str, Any] = {
        "bench": "engine", "model": type(model).__name__, "device": str(device),
        "unit": "gpu" if device.type == "cuda" else "core", "threads": args.threads,
        "half": bool(args.half), "tick_deadline_ms": args.tick_deadline * 1e3,
        "utilisation": args.utilisation, "frame_hops": args.frame_hops,
        "multi_hop": multi_hop, "traced": traced, "busy_thread": bool(args.busy_thread),
        "cuda_graphs": device.type == "cuda" and not args.no_graphs,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "streams_per_core": best,
        "tick_p50_ms": run_stats.pop("tick_p50_ms"), "tick_p99_ms": run_stats.pop("tick_p99_ms"),
        "capacity_streams_per_core": round(capacity, 2),
        "single_stream_per_core": round(period_s / ticks[1], 2),
        "tick_ms_by_batch": {b: round(t * 1e3, 3) for b, t in sorted(ticks.items())},
        "forward_ms_by_batch": {b: round(t * 1e3, 3) for b, t in sorted(forwards.items())},
        "search_clock": args.search_clock,
        "cpu_ms_by_batch": {b: round(t * 1e3, 3) for b, t in sorted(cpus.items())},
        "cpu_capacity_streams_per_core": round(max(b * period_s / t for b, t in cpus.items()
                                                   if t > 0), 2),
        "paced": run_stats,
    }
    unit = "GPU" if device.type == "cuda" else "core"
    print(f"=> {best} real-time streams per {unit} (search bound {limit}); paced at {load}: "
          f"tick p50 {result['tick_p50_ms']} ms, p99 {result['tick_p99_ms']} ms, "
          f"kept up: {run_stats['kept_up']}", file=sys.stderr)
    if args.anchors:
        seconds = min(args.seconds, 5.0)
        result["rnnoise_streams_per_core"] = anchor_streams_per_core("rnnoise", seconds)
        result["dfn3_streams_per_core"] = anchor_streams_per_core("dfn3", seconds)
    else:
        result["rnnoise_streams_per_core"] = result["dfn3_streams_per_core"] = None
    return result


def run(args: argparse.Namespace) -> int:
    from denoiser.engine import EngineError
    from denoiser.model.weights import ModelLoadError

    if (args.seconds <= 0 or (args.streams is not None and args.streams < 1)
            or not 0 < args.utilisation <= 1 or args.probe_seconds <= 0
            or not 1 <= args.frame_hops <= MAX_ROUNDS_PER_TICK):
        print(f"error: --seconds and --probe-seconds must be > 0, --streams >= 1, "
              f"0 < --utilisation <= 1, 1 <= --frame-hops <= {MAX_ROUNDS_PER_TICK}",
              file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_bench(args))
    except (ModelLoadError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m denoiser.bench.engine [flags]`: `bench engine` without the CLI around it."""
    parser = argparse.ArgumentParser(prog="python -m denoiser.bench.engine",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
