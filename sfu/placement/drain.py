"""Draining a node: no new rooms, the calls go on, and the node stops when the last room
ends or the deadline passes (`POST /admin/drain` with the admin token, or SIGUSR1)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from sfu.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from sfu.context import SfuContext

log = logging.getLogger(__name__)


class Drainer:
    """Drain this node once; `ctx.stop` (set by `serve`) is set when it is empty."""

    def __init__(self, ctx: SfuContext, app: web.Application) -> None:
        self.ctx = ctx
        self.app = app
        self.task: asyncio.Task[None] | None = None
        self.started_at: float | None = None

    @property
    def draining(self) -> bool:
        return self.task is not None

    def start(self) -> None:
        if self.task is None:
            self.started_at = asyncio.get_running_loop().time()
            self.task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        from sfu.placement.gate import hosted

        ctx = self.ctx
        deadline = ctx.settings.drain_deadline
        log.info("draining", extra={"rooms": len(hosted(ctx, self.app)[0]),
                                    "deadline_s": deadline})
        try:
            await ctx.placement.drain()
        except Exception:  # Redis unreachable: the next beat says it
            log.warning("could not announce the drain yet; the next beat will")
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while hosted(ctx, self.app)[0] and loop.time() < end:
            await asyncio.sleep(0.25)
        rooms = hosted(ctx, self.app)[0]
        log.info("drained" if not rooms else "drain deadline passed",
                 extra={"rooms_left": len(rooms)})
        if ctx.stop is not None:
            ctx.stop.set()


async def drain_handler(request: web.Request) -> web.Response:
    """POST /admin/drain (Authorization: Bearer <admin token>) -> 202 {"status": "draining"}."""
    from sfu.context import CONTEXT

    ctx = request.app[CONTEXT]
    token = ctx.settings.admin_token
    if not token:
        raise Forbidden("admin endpoints are off: start the node with --admin-token",
                        "admin_disabled")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(
            given[len("Bearer "):].strip().encode(), token.encode()):
        raise Unauthorized("POST /admin/drain needs the admin token", "unauthorized")
    assert ctx.drainer is not None
    ctx.drainer.start()
    from sfu.placement.gate import hosted

    return web.json_response({"status": "draining", "rooms": len(hosted(ctx, request.app)[0]),
                              "deadline_s": ctx.settings.drain_deadline}, status=202)
