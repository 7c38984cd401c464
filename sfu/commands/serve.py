"""`denoise-sfu serve`: run the SFU (signalling, rooms, the in-process engine) on one node.

Every flag also reads `DENOISE_SFU_*`. Without a secret a random one is made for this run and
a ready demo link (with a token) is printed. Logs are one JSON object per line by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from aiohttp import web

from sfu import settings as settings_mod
from sfu.auth import issue_token
from sfu.settings import Settings, SettingsError

log = logging.getLogger("sfu.serve")

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the `extra={...}` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname.lower(),
            "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | None) \
                    else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
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

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
