"""`denoise-sfu serve`: run the SFU (signalling, rooms, the in-process engine) on one node.

With `--redis URL` the node joins a cluster: it registers its `--public-url`, rooms are placed
across the nodes, and joins for a room held elsewhere get 307 to its owner (docs/operations.md).
SIGUSR1 (or `POST /admin/drain` with `--admin-token`) drains the node: no new rooms, the calls
go on, and it exits when the last room ends or `--drain-deadline` passes. SIGTERM stops it now.
Every flag also reads `DENOISE_SFU_*`. Without a secret a random one is made for this run and
a ready demo link (with a token) is printed. Logs are one JSON object per line by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time

from aiohttp import web

from denoiser.lifecycle import run_until_signalled
from denoiser.logs import log_to_stderr
from sfu import settings as settings_mod
from sfu.auth import issue_token
from sfu.settings import Settings, SettingsError

log = logging.getLogger("sfu.serve")


def configure_logging(settings: Settings) -> None:
    log_to_stderr(settings.log_format, settings.log_level)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the SFU",
                                   description="Run the denoising SFU on this node.")
    settings_mod.add_arguments(parser)
    parser.set_defaults(func=run)


def demo_link(settings: Settings, room: str = "demo", identity: str = "guest") -> str:
    token = issue_token(settings.secret, room, identity, settings.token_ttl)
    return f"{settings.base_url}/?room={room}&token={token}"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set."""
    from sfu.app import create_app
    from sfu.context import CONTEXT
    from sfu.http_guard import GuardedRunner

    app = create_app(settings)
    ctx = app[CONTEXT]
    ctx.stop = stop  # a drained node stops itself
    with contextlib.suppress(NotImplementedError, AttributeError):
        drainer = ctx.drainer
        assert drainer is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, drainer.start)
    runner = GuardedRunner(app, handle_signals=False)  # connection cap, header/idle timeouts
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("listening", extra={"host": settings.host, "port": settings.port,
                                     "url": settings.base_url})
        if settings.secret_generated:
            print(f"No secret configured: generated one for this run.\n"
                  f"Demo page (open it in two browsers): {settings.base_url}/?room=demo\n"
                  f"Invitation link for one identity: {demo_link(settings)}\n"
                  f"Tokens: denoise-sfu token --room R --identity I --secret {settings.secret}",
                  flush=True)
        await stop.wait()
    finally:
        started = time.monotonic()
        await runner.cleanup()
        log.info("stopped", extra={"cleanup_s": round(time.monotonic() - started, 3)})


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_sources(args).with_secret()
        from sfu.app import check_supported

        check_supported(settings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    return run_until_signalled(lambda stop: serve(settings, stop))
