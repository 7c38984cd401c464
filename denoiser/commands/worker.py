"""`denoise-sfu worker`: the shared denoising worker that SFU nodes send their streams to.

It loads the model once, runs one `LocalEngine`, and serves it over TCP (`--listen`) to every
node started with `serve --engine workers --worker HOST:PORT`; the hops of all nodes share the
engine's batched ticks. `--metrics HOST:PORT` serves `/metrics` (Prometheus) and `/healthz`.
Every flag also reads `DENOISE_SFU_<FLAG>`. With `--redis URL` the worker registers there
(its `--advertise` address, slots and load, under a lease renewed every second) and nodes
started with `serve --engine workers --redis URL` find it without naming it. SIGUSR1 (or
`POST /admin/drain` on the metrics address, with `--admin-token`) drains it: it says so in
Redis, the nodes move their streams to other workers, and it exits once no stream is left (or
after `--drain-deadline` seconds).

Without `--secret` it listens only on loopback: on any other address it refuses to start,
unless `--allow-no-secret` says that the network is trusted (and it then logs so loudly).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
from typing import TYPE_CHECKING

from denoiser.lifecycle import run_until_signalled
from denoiser.logs import log_to_stderr
from denoiser.worker.address import parse_address
from denoiser.worker.limits import HANDSHAKE_TIMEOUT_S, HEARTBEAT_TIMEOUT_S, MAX_HANDSHAKES

if TYPE_CHECKING:
    from aiohttp.web import AppRunner

    from denoiser.worker.server import WorkerServer

log = logging.getLogger("denoiser.worker")


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("DENOISE_SFU_" + flag.upper().replace("-", "_")) or default


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "worker", help="serve the denoising engine to SFU nodes",
        description="Run the shared denoising worker: SFU nodes started with "
                    "`serve --engine workers --worker HOST:PORT` send it their streams.")
    p.add_argument("--listen", default=_env("listen", "0.0.0.0:7100"), metavar="HOST:PORT",
                   help="address to serve nodes on; port 0 picks a free one "
                        "[DENOISE_SFU_LISTEN]")
    p.add_argument("--redis", default=_env("redis"), metavar="URL",
                   help="register in Redis (redis://HOST:PORT/DB) so that nodes find this "
                        "worker [DENOISE_SFU_REDIS]")
    p.add_argument("--advertise", default=_env("advertise"), metavar="HOST:PORT",
                   help="the address nodes should use, registered in Redis (default: the "
                        "listen host, or this host's name when listening on all, and the "
                        "port listened on) [DENOISE_SFU_ADVERTISE]")
    p.add_argument("--worker-id", default=_env("worker_id"),
                   help="this worker's name in Redis (default: host name and a random "
                        "suffix) [DENOISE_SFU_WORKER_ID]")
    p.add_argument("--admin-token", default=_env("admin_token"),
                   help="bearer token for POST /admin/drain on the metrics address "
                        "[DENOISE_SFU_ADMIN_TOKEN]")
    p.add_argument("--drain-deadline", type=float, default=_env("drain_deadline", "300"),
                   help="seconds a draining worker waits for its streams to move before it "
                        "exits [DENOISE_SFU_DRAIN_DEADLINE]")
    p.add_argument("--device", default=_env("device", "auto"), choices=("auto", "cpu", "cuda"),
                   help="where the model runs [DENOISE_SFU_DEVICE]")
    p.add_argument("--max-streams", type=int, default=_env("max_streams"),
                   help="streams the engine denoises at once (default: measured at start on "
                        "CPU, 256 on CUDA) [DENOISE_SFU_MAX_STREAMS]")
    p.add_argument("--model-weights", default=_env("model_weights"),
                   help="a checkpoint (path, or a name in models/) [DENOISE_SFU_MODEL_WEIGHTS]")
    p.add_argument("--model-lookahead", type=int, default=_env("model_lookahead"),
                   choices=(0, 1, 2), help="look-ahead in hops [DENOISE_SFU_MODEL_LOOKAHEAD]")
    p.add_argument("--secret", default=_env("secret"),
                   help="only nodes started with this secret (serve's --secret) may connect "
                        "(challenge-response); required unless --listen is loopback or "
                        "--allow-no-secret [DENOISE_SFU_SECRET]")
    p.add_argument("--allow-no-secret", action="store_true",
                   default=_env("allow_no_secret", "") not in ("", "0", "false", "no"),
                   help="listen on a non-loopback address without --secret: any host that "
                        "reaches it may use the worker (a trusted network only) "
                        "[DENOISE_SFU_ALLOW_NO_SECRET]")
    p.add_argument("--heartbeat-timeout", type=float,
                   default=_env("heartbeat_timeout", str(HEARTBEAT_TIMEOUT_S)), metavar="S",
                   help="a node silent this long is dropped and its streams freed; nodes ping "
                        "4 times as often and count the worker lost after as long "
                        "[DENOISE_SFU_HEARTBEAT_TIMEOUT]")
    p.add_argument("--handshake-timeout", type=float,
                   default=_env("handshake_timeout", str(HANDSHAKE_TIMEOUT_S)), metavar="S",
                   help="a connection must finish its handshake within this "
                        "[DENOISE_SFU_HANDSHAKE_TIMEOUT]")
    p.add_argument("--max-handshakes", type=int,
                   default=_env("max_handshakes", str(MAX_HANDSHAKES)), metavar="N",
                   help="connections allowed in their handshake at once; more are closed "
                        "unread [DENOISE_SFU_MAX_HANDSHAKES]")
    p.add_argument("--threads", type=int, default=_env("threads"),
                   help="torch threads of the engine (default: torch's, one per core) "
                        "[DENOISE_SFU_THREADS]")
    p.add_argument("--metrics", default=_env("metrics"), metavar="HOST:PORT",
                   help="serve /metrics and /healthz over HTTP here [DENOISE_SFU_METRICS]")
    p.add_argument("--log-format", default=_env("log_format", "json"), choices=("json", "text"),
                   help="logs on stderr: JSON lines or text [DENOISE_SFU_LOG_FORMAT]")
    p.set_defaults(func=run)


async def serve_worker(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Load the model, start the engine and the server; run until `stop` is set."""
    from denoiser.engine.capacity import Admission, measure_tick_cost, resolve_device
    from denoiser.engine.local import LocalEngine
    from denoiser.model.weights import load_default_model
    from denoiser.worker.server import WorkerServer

    device = resolve_device(args.device)
    if args.threads is not None:
        import torch

        torch.set_num_threads(int(args.threads))  # before the capacity is measured
    model = await asyncio.to_thread(load_default_model, device, args.model_lookahead,
                                    args.model_weights)
    max_streams = args.max_streams
    admission = None
    if max_streams is None and device.type != "cuda":  # batched capacity, kept current
        admission = Admission(await asyncio.to_thread(measure_tick_cost, model))
    host, port = parse_address(args.listen, listen=True)
    engine = LocalEngine(model, device=device, max_streams=int(max_streams or 256),
                         threads=None if args.threads is None else int(args.threads),
                         admission=admission)
    server = WorkerServer(engine, host, port,
                          description=f"{args.model_weights or 'default'} on {device}",
                          secret=args.secret, heartbeat_timeout=float(args.heartbeat_timeout),
                          handshake_timeout=float(args.handshake_timeout),
                          max_handshakes=int(args.max_handshakes))
    if not args.secret and not is_loopback(host):
        log.warning("NO SECRET on a non-loopback address (--allow-no-secret): any host that "
                    "reaches %s:%d may use this worker's slots and send it audio", host, port)
    elif not args.secret:
        log.info("no --secret: listening on loopback only, for nodes on this machine")
    metrics_runner: AppRunner | None = None
    registration = None
    drainer = Drainer(server, stop, float(args.drain_deadline))
    await engine.start()
    await warm_up(engine)
    try:
        await server.start()
        if args.redis:
            from denoiser.worker.registry import WorkerRegistration

            address = args.advertise or advertised_address(host, server.port)
            registration = WorkerRegistration(
                args.redis, args.worker_id or default_worker_id(), address,
                engine.max_streams, lambda: engine.live_streams)
            await registration.start()
            drainer.registration = registration
        if args.metrics:
            metrics_runner = await _serve_metrics(server, *parse_address(args.metrics, listen=True),
                                                  drainer=drainer, admin_token=args.admin_token)
        with contextlib.suppress(NotImplementedError, AttributeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, drainer.start)
        # One line on stdout that scripts (and the tests) read to find the port.
        print(json.dumps({"worker": "listening", "host": host, "port": server.port,
                          "max_streams": engine.max_streams, "device": str(device),
                          "traced": engine.trace, "secret": bool(args.secret),
                          "redis": registration is not None,
                          "address": registration.address if registration else None}),
              flush=True)
        await stop.wait()
    finally:
        drainer.cancel()
        if registration is not None:
            await registration.close()  # nodes stop sending here before the port closes
        await server.close()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await engine.close()


async def warm_up(engine: object, requests: int = 6) -> None:
    """Run a few requests of 1 and 2 hops through the engine before taking any stream.

    The first calls of a traced graph are slow (TorchScript profiles and optimises it on its
    first runs: about a second on CPU); a worker that takes over the streams of a lost one
    must answer the first of them within the hop deadline, not after that second."""
    import numpy as np

    hop = int(engine.hop_size)  # type: ignore[attr-defined]
    noise = np.random.default_rng(0).standard_normal(2 * hop).astype(np.float32) * 0.01
    engine.open_stream("warm-up")  # type: ignore[attr-defined]
    try:
        for i in range(requests):
            await engine.process("warm-up", noise[: hop * (1 + i % 2)])  # type: ignore[attr-defined]
    finally:
        engine.close_stream("warm-up")  # type: ignore[attr-defined]


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secret_problem(host: str, secret: str | None, allow_no_secret: bool) -> str | None:
    """Why the worker must not start this way, or None."""
    if secret or allow_no_secret or is_loopback(host):
        return None
    return (f"the worker would listen on {host or '*'} without a secret: any host that reaches "
            "it could use its slots. Give --secret (or DENOISE_SFU_SECRET; the SFU nodes' "
            "--secret), listen on loopback (--listen 127.0.0.1:PORT), or pass "
            "--allow-no-secret on a network you trust")


def advertised_address(host: str, port: int) -> str:
    """HOST:PORT others reach this worker at, when `--advertise` is not given."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


class Drainer:
    """Drain the worker once asked: say so in Redis, wait for the nodes to move every stream
    away (or the deadline), then stop."""

    def __init__(self, server: object, stop: asyncio.Event, deadline_s: float) -> None:
        self.server = server
        self.stop = stop
        self.deadline_s = deadline_s
        self.registration: object | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self.task is not None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._drain())

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _drain(self) -> None:
        engine = self.server.engine  # type: ignore[attr-defined]
        log.info("draining", extra={"streams": engine.live_streams,
                                    "deadline_s": self.deadline_s})
        if self.registration is not None:
            await self.registration.drain()  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        while engine.live_streams and loop.time() < deadline:
            await asyncio.sleep(0.2)
        log.info("drained", extra={"streams_left": engine.live_streams})
        self.stop.set()


async def _serve_metrics(server: WorkerServer, host: str, port: int,
                         drainer: Drainer | None = None,
                         admin_token: str | None = None) -> AppRunner:
    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    from denoiser.worker.metrics import WorkerCollector

    registry = CollectorRegistry()
    registry.register(WorkerCollector(server))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        draining = drainer is not None and drainer.draining
        return web.json_response({"status": "draining" if draining else "ok",
                                  "draining": draining,
                                  "streams": server.engine.live_streams})

    async def drain(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not admin_token or not hmac.compare_digest(given.encode(), admin_token.encode()):
            return web.json_response({"error": "unauthorized",
                                      "message": "POST /admin/drain needs the admin token"},
                                     status=401 if admin_token else 403)
        assert drainer is not None
        drainer.start()
        return web.json_response({"status": "draining"}, status=202)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/admin/drain", drain)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def run(args: argparse.Namespace) -> int:
    try:
        if args.advertise:
            parse_address(args.advertise)
        if args.redis and not args.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis must be a redis:// URL, not {args.redis!r}")
        host, _ = parse_address(args.listen, listen=True)
        problem = secret_problem(host, args.secret, bool(args.allow_no_secret))
        if problem:
            raise ValueError(problem)
        if float(args.heartbeat_timeout) <= 0 or float(args.handshake_timeout) <= 0:
            raise ValueError("--heartbeat-timeout and --handshake-timeout must be positive")
        if int(args.max_handshakes) < 1:
            raise ValueError("--max-handshakes must be at least 1")
        if args.metrics:
            parse_address(args.metrics, listen=True)
        if args.max_streams is not None and int(args.max_streams) < 1:
            raise ValueError("--max-streams must be at least 1")
        if args.threads is not None and int(args.threads) < 1:
            raise ValueError("--threads must be at least 1")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log_to_stderr(args.log_format)
    return run_until_signalled(lambda stop: serve_worker(args, stop))
