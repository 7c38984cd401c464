"""`denoise-sfu bench placement`: how fast a Redis-backed cluster on this machine places joins.

It starts a `redis-server` (a free loopback port, no persistence), one `denoise-sfu worker`
and `--nodes` SFU nodes (`serve --redis --engine workers`), all real processes, then:

- **claims**: `--clients` concurrent clients send WHIP joins for new rooms to random nodes for
  `--seconds`, following each 307 to the owner. A join counts as placed when the owner answered
  it (its offer is a bare `v=0`, refused with 400 after the claim: the bench measures placement,
  not media). Reported: joins placed per second, the client's time per placed join (p50/p99),
  and the nodes' own claim round trip to Redis (`placement_claim_recent_seconds`, p50/p99).
- **redirect overhead**: for rooms already placed, the same join sent to the owner and to
  another node (307, then the owner), one at a time; the difference of the medians is what the
  redirect costs a client.

Everything shares this machine's cores (clients, nodes, worker, Redis): the figures are for
this machine as it was, and end with ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from sfu.auth import issue_token

SECRET = "bench-placement-secret-0123456789abcdef"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _host() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _wait_http(url: str, proc: subprocess.Popen[bytes], wait: float = 120) -> None:
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered 200")
        time.sleep(0.2)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    array = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(array, 50)), 3),
            "p99_ms": round(float(np.percentile(array, 99)), 3)}


async def _join(session: aiohttp.ClientSession, base: str, room: str) -> tuple[int, int]:
    """One WHIP join for `room` at `base`, following 307: (final status, redirects)."""
    token = issue_token(SECRET, room, "bench", 600, ("publish",))
    url, redirects = f"{base}/whip/{room}", 0
    while True:
        async with session.post(url, data="v=0\r\n", allow_redirects=False, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as resp:
            await resp.read()
            if resp.status == 307 and redirects < 3:
                url, redirects = resp.headers["Location"], redirects + 1
                continue
            return resp.status, redirects


async def _claims(nodes: list[str], clients: int, seconds: float) -> dict[str, Any]:
    placed: list[float] = []
    redirected = 0
    refused: dict[int, int] = {}
    counter = iter(range(10**9))
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def client(seed: int) -> None:
            nonlocal redirected
            rng = random.Random(seed)
            while time.monotonic() < end:
                room = f"bench-{next(counter)}"
                began = time.perf_counter()
                status, redirects = await _join(session, rng.choice(nodes), room)
                if status == 400:  # the owner claimed it, then refused the bare offer
                    placed.append(time.perf_counter() - began)
                    redirected += redirects > 0
                else:
                    refused[status] = refused.get(status, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.monotonic() - started
    return {"joins_placed": len(placed), "joins_per_s": round(len(placed) / elapsed, 1),
            "redirected_share": round(redirected / max(1, len(placed)), 3),
            "client_time": _percentiles(placed), "refused": refused}


async def _redirect_overhead(nodes: list[str], rounds: int) -> dict[str, Any]:
    direct: list[float] = []
    via: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(rounds):
            room = f"overhead-{i}"
            token = issue_token(SECRET, room, "bench", 600, ("publish",))
            async with session.post(f"{nodes[0]}/whip/{room}", data="v=0\r\n",
                                    allow_redirects=False, headers={
                                        "Authorization": f"Bearer {token}",
                                        "Content-Type": "application/sdp"}) as resp:
                owner = resp.headers["Location"].split("/whip/")[0] if resp.status == 307 \
                    else nodes[0]
            other = next(n for n in nodes if n != owner)
            for base, sink in ((owner, direct), (other, via)):
                began = time.perf_counter()
                status, _ = await _join(session, base, room)
                if status == 400:
                    sink.append(time.perf_counter() - began)
    overhead = statistics.median(via) - statistics.median(direct) if direct and via else None
    return {"direct": _percentiles(direct), "redirected": _percentiles(via),
            "overhead_ms": None if overhead is None else round(overhead * 1e3, 3),
            "rounds": rounds}


def _claim_quantiles(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("denoise_sfu_placement_claim_recent_seconds{"):
            q = line.split('quantile="')[1].split('"')[0]
            out[f"p{int(float(q) * 100)}_ms"] = round(float(line.rsplit(" ", 1)[1]) * 1e3, 3)
    return out


def run_bench_placement(args: argparse.Namespace) -> int:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("error: redis-server is not installed", file=sys.stderr)
        return 2
    host = _host()
    tmp = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    procs: list[subprocess.Popen[bytes]] = []
    redis_port = _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        procs.append(subprocess.Popen(
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        worker_metrics = _free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "sfu.cli", "worker", "--listen", "127.0.0.1:0",
             "--redis", redis_url, "--secret", SECRET, "--device", "cpu", "--threads", "1",
             "--max-streams", "2", "--metrics", f"127.0.0.1:{worker_metrics}"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "worker.log").open("w"), env=_env())
        procs.append(worker)
        nodes = []
        for i in range(args.nodes):
            port = _free_port(host)
            url = f"http://{host}:{port}"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "sfu.cli", "serve", "--host", host, "--port", str(port),
                 "--public-url", url, "--redis", redis_url, "--secret", SECRET,
                 "--node-id", f"bench-{i}", "--engine", "workers", "--max-rooms", "1000000",
                 "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=(tmp / f"node{i}.log").open("w"),
                env=_env()))
            nodes.append(url)
        _wait_http(f"http://127.0.0.1:{worker_metrics}/healthz", worker)
        for url, proc in zip(nodes, procs[2:], strict=True):
            _wait_http(url + "/readyz", proc)
        print(f"cluster: redis {redis_url}, 1 worker, {len(nodes)} nodes {nodes}", flush=True)
        claims = asyncio.run(_claims(nodes, args.clients, args.seconds))
        print(f"claims: {claims['joins_placed']} joins placed in {args.seconds:.0f} s by "
              f"{args.clients} clients: {claims['joins_per_s']}/s; client time per join "
              f"{claims['client_time']}; redirected {claims['redirected_share']:.0%}; "
              f"refused {claims['refused']}", flush=True)
        server_claims = {f"node{i}": _claim_quantiles(url) for i, url in enumerate(nodes)}
        print(f"claim round trip to Redis, per node (recent): {server_claims}", flush=True)
        overhead = asyncio.run(_redirect_overhead(nodes, args.rounds))
        print(f"redirect: direct {overhead['direct']}, redirected {overhead['redirected']}, "
              f"overhead {overhead['overhead_ms']} ms (median)", flush=True)
        print(json.dumps({"bench": "placement", "nodes": len(nodes), "clients": args.clients,
                          "seconds": args.seconds, "claims": claims,
                          "claim_round_trip": server_claims, "redirect": overhead,
                          "cpus": os.cpu_count()}))
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def register_bench_placement(subparsers: argparse._SubParsersAction
                             ) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "placement", help="joins per second a Redis-backed cluster on this machine places",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=3, help="SFU nodes to start")
    parser.add_argument("--clients", type=int, default=16, help="concurrent joining clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long clients join")
    parser.add_argument("--rounds", type=int, default=100,
                        help="joins sent directly and redirected, for the overhead")
    parser.set_defaults(func=run_bench_placement)
    return parser
