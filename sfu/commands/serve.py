"""`denoise-sfu serve`: run the SFU (signalling, rooms, the in-process engine) on one node.

Every flag also reads `DENOISE_SFU_*`. Without a secret a random one is made for this run and
a ready demo link (with a token) is printed. Logs are one JSON object per line by default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
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
