"""`denoise-sfu worker`: the shared denoising worker that SFU nodes send their streams to.

It loads the model once, runs one `LocalEngine`, and serves it over TCP (`--listen`) to every
node started with `serve --engine workers --worker HOST:PORT`; the hops of all nodes share the
engine's batched ticks. `--metrics HOST:PORT` serves `/metrics` (Prometheus) and `/healthz`.
Every flag also reads `DENOISE_SFU_<FLAG>`. Placement through Redis (`--redis`) is not built
yet: nodes name their worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from denoiser.lifecycle import run_until_signalled
from denoiser.logs import log_to_stderr

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
                   help="register with Redis for placement (not available yet) "
                        "[DENOISE_SFU_REDIS]")
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
                   help="only nodes started with this secret (serve's --secret) may connect; "
                        "without it any node may [DENOISE_SFU_SECRET]")
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
    from denoiser.worker.address import parse_address
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
                          secret=args.secret)
    if not args.secret:
        log.warning("no --secret: any node that reaches this address may use the worker")
    metrics_runner: AppRunner | None = None
    await engine.start()
    try:
        await server.start()
        if args.metrics:
            metrics_runner = await _serve_metrics(server, *parse_address(args.metrics, listen=True))
        # One line on stdout that scripts (and the tests) read to find the port.
        print(json.dumps({"worker": "listening", "host": host, "port": server.port,
                          "max_streams": engine.max_streams, "device": str(device),
                          "traced": engine.trace, "secret": bool(args.secret)}), flush=True)
        await stop.wait()
    finally:
        await server.close()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await engine.close()


async def _serve_metrics(server: WorkerServer, host: str, port: int) -> AppRunner:
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
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def run(args: argparse.Namespace) -> int:
    if args.redis:
        print("error: --redis (placement through Redis) is not available yet; start nodes "
              "with `serve --engine workers --worker HOST:PORT`", file=sys.stderr)
        return 2
    try:
        from denoiser.worker.address import parse_address

        parse_address(args.listen, listen=True)
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
