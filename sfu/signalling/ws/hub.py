"""The WebSocket room protocol of the demo page (`GET /ws`, `POST /demo/token`).

One WebSocket and one RTCPeerConnection per client: the client publishes its microphone on
the first offer; after that only the server offers, adding one `sendonly` transceiver per other
participant and recycling the transceivers of those who left. The protocol is documented in
docs/ws-protocol.md. Room bookkeeping (publishers, subscriptions, pipelines) stays in
`sfu.rooms.RoomRegistry`; this module only adds the negotiation state of each socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from sfu.auth import authorize, check_name, issue_token, verify_token
from sfu.context import CONTEXT
from sfu.errors import HttpError, NotFound
from sfu.limits import SessionLimits, SessionSlot
from sfu.media.metrics import register_media_metrics
from sfu.metrics import Metrics
from sfu.rooms import RoomEvent, RoomRegistry
from sfu.settings import Settings
from sfu.signalling.ws.messages import HARD_MAX_MESSAGE_BYTES, MessageRefused, parse_message
from sfu.signalling.ws.session import Session

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
RATE_LIMIT_PER_S = 50
DEMO_TOKEN_TTL_S = 3600
#: Why the server removed a client's participant -> the `bye` reason the client gets.
SERVER_ENDED = {"pipeline_failed": "media_failed", "track_ended": "media_ended"}


# -- all sockets of one app ------------------------------------------------------------------

class WsHub:
    """The sessions of one app, keyed by room and identity; listens to the registry."""

    def __init__(self, registry: RoomRegistry, settings: Settings,
                 metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.demo_tokens = bool(settings.demo_tokens)
        self.rooms: dict[str, dict[str, Session]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Placement (sfu.placement.gate): called with (session, room) on join; it raises
        # ProtocolError to send the client to the room's owner, or to say "try later".
        self.place: Callable[[Session, str], Awaitable[None]] | None = None
        registry.add_listener(self._on_room_event)
        # Session caps (sfu.limits, set by create_app): a joined socket holds one slot.
        self.limits: SessionLimits | None = None
        self._slots: dict[Session, SessionSlot] = {}

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def count_refused(self, code: str) -> None:
        """Count a message answered `error` (codes are the server's own, a bounded set)."""
        if self.metrics is not None:
            self.metrics.ws_messages_refused.labels(code).inc()

    def count_peer_failure(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.peer_failures.labels(reason).inc()

    def _on_room_event(self, event: RoomEvent) -> None:
        for session in list(self.rooms.get(event.room, {}).values()):
            if event.reason in SERVER_ENDED and event.session_id is not None \
                    and session.publish_session == event.session_id:
                self.spawn(session.publish_ended(SERVER_ENDED[event.reason]))
                continue
            if event.kind == "mode" and session.identity == event.identity and event.mode:
                session.mode = event.mode
            if event.kind == "mode":
                self.spawn(session.send(self.participants_message(session)))
            else:
                self.spawn(session.sync())

    def participants_message(self, session: Session) -> dict[str, Any]:
        room = self.registry.get(session.room)
        publishers = dict(room.participants) if room else {}
        mids = {s.target: s.transceiver.mid for s in session.slots if s.target is not None}
        entries: dict[str, dict[str, Any]] = {}
        for identity, participant in publishers.items():
            entries[identity] = {"identity": identity, "mode": participant.mode,
                                 "publishing": True, "mid": mids.get(identity)}
        for identity, other in self.rooms.get(session.room, {}).items():
            entries.setdefault(identity, {"identity": identity, "mode": other.mode,
                                          "publishing": False, "mid": None})
        listed = sorted(entries.values(), key=lambda e: e["identity"])
        return {"type": "participants", "participants": listed}

    def broadcast_participants(self, room: str) -> None:
        for session in list(self.rooms.get(room, {}).values()):
            self.spawn(session.send(self.participants_message(session)))

    async def join(self, session: Session, message: dict[str, Any],
                   address: str | None = None) -> None:
        secret = self.settings.secret
        try:
            claims = verify_token(secret, message["token"])
        except HttpError as err:
            raise MessageRefused("unauthorized", err.message, 4401) from err
        if not claims.grants:
            raise MessageRefused("forbidden", "the token grants neither publish nor subscribe",
                                4403)
        with contextlib.suppress(HttpError):
            authorize(claims, claims.room, "subscribe")
        if self.place is not None:
            await self.place(session, claims.room)
        session.room, session.identity = claims.room, claims.identity
        session.grants, session.mode = claims.grants, message.get("mode", "auto")
        room = self.rooms.setdefault(claims.room, {})
        old = room.get(claims.identity)
        if old is not None:  # the same identity joined again (a reload): the newer one wins
            await old.send({"type": "bye", "reason": "replaced"})
            await self.end(old, 4001)
        if self.limits is not None:
            try:
                self._slots[session] = self.limits.acquire(claims.room, claims.identity, address)
            except HttpError as err:
                raise MessageRefused(err.code, err.message, 4429) from err
        room[claims.identity] = session
        # Media must connect in time, offer or not: otherwise the session ends (and what it
        # holds is released) even while the socket answers pings.
        session.start_deadline(self.settings.connect_timeout)
        log.info("ws joined", extra={"room": claims.room, "identity": claims.identity})
        message_out = self.participants_message(session)
        await session.send({"type": "joined", "room": claims.room, "identity": claims.identity,
                            "mode": session.mode, "participants": message_out["participants"]})
        self.broadcast_participants(claims.room)

    async def end(self, session: Session, close_code: int | None) -> None:
        """Remove `session` everywhere and close its socket."""
        room = self.rooms.get(session.room)
        if room is not None and room.get(session.identity) is session:
            del room[session.identity]
            if not room:
                del self.rooms[session.room]
        slot = self._slots.pop(session, None)
        if slot is not None:
            slot.release()
        await session.close()
        if not session.ws.closed:
            await session.ws.close(code=close_code or 1000)
        if room:
            self.broadcast_participants(session.room)

    async def close(self) -> None:
        for room in list(self.rooms.values()):
            for session in list(room.values()):
                await session.send({"type": "bye", "reason": "server_shutdown"})
                await self.end(session, 1001)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- HTTP handlers ----------------------------------------------------------------------------

WS_HUB = web.AppKey("denoise_sfu_ws_hub", WsHub)


class _RateLimiter:
    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.window = time.monotonic()
        self.count = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 1.0:
            self.window, self.count = now, 0
        self.count += 1
        return self.count <= self.per_second


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[WS_HUB]
    if "room" in request.query:  # a client that names its room is sent to its owner first
        from sfu.placement.gate import ws_pre_upgrade

        await ws_pre_upgrade(request, request.query["room"])
    ws = web.WebSocketResponse(max_msg_size=HARD_MAX_MESSAGE_BYTES, heartbeat=20.0)
    await ws.prepare(request)
    session = Session(hub, ws)
    limiter = _RateLimiter(RATE_LIMIT_PER_S)
    joined = False
    loop = asyncio.get_running_loop()
    join_deadline = loop.time() + JOIN_TIMEOUT_S
    try:
        while not ws.closed:
            timeout = None if joined else max(0.0, join_deadline - loop.time())
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await session.error("not_joined", "no join within "
                                    f"{JOIN_TIMEOUT_S:.0f} s")
                await ws.close(code=4408)
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                break
            try:
                if not limiter.allow():
                    raise MessageRefused("rate_limited", "too many messages; slow down")
                if msg.type != WSMsgType.TEXT:
                    raise MessageRefused("bad_message", "only JSON text messages are accepted")
                message = parse_message(msg.data)
                if not joined:
                    if message["type"] != "join":
                        raise MessageRefused("not_joined", "send 'join' first")
                    await hub.join(session, message, request.remote)
                    joined = True
                else:
                    await session.handle(message)
            except MessageRefused as err:
                hub.count_refused(err.code)
                await session.error(err.code, err.message)
                if err.close_code is not None:
                    await ws.close(code=err.close_code, message=err.code.encode())
                    break
            except Exception:
                log.exception("ws message failed", extra={"room": session.room})
                hub.count_refused("internal_error")
                await session.error("internal_error", "the server could not handle that")
    finally:
        if joined:
            await hub.end(session, None)
        elif not ws.closed:
            await ws.close()
    return ws


async def demo_token_handler(request: web.Request) -> web.Response:
    """A token for anyone, only when the server runs with demo tokens on (see the doc)."""
    hub = request.app[WS_HUB]
    if not hub.demo_tokens:
        raise NotFound("this server does not hand out demo tokens; ask for an invitation link",
                       "demo_tokens_disabled")
    from sfu.errors import BadRequest
    from sfu.signalling.body import read_json

    body = await read_json(request, hub.settings.body_timeout)  # bounded, in time, or 4xx
    if not isinstance(body, dict):
        raise BadRequest("body must be JSON {room, name}")
    try:
        room = check_name("room", body.get("room"))
        name = check_name("name", body.get("name"))
    except ValueError as err:
        raise BadRequest(str(err), "bad_name") from err
    identity = f"{name[:54]}-{secrets.token_hex(2)}"
    ttl = min(DEMO_TOKEN_TTL_S, hub.settings.token_ttl)
    token = issue_token(hub.settings.secret, room, identity, ttl=ttl)
    return web.json_response({"token": token, "identity": identity, "room": room})


def setup(app: web.Application) -> WsHub:
    """Mount `GET /ws` and `POST /demo/token` on an app made by `sfu.app.create_app`."""
    ctx = app[CONTEXT]
    hub = WsHub(ctx.registry, ctx.settings, ctx.metrics)
    register_media_metrics(ctx.metrics)
    for reason in ("failed", "timeout"):
        ctx.metrics.peer_failures.labels(reason)
    from sfu.placement.gate import ws_placer

    hub.place = ws_placer(ctx)
    app[WS_HUB] = hub
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/demo/token", demo_token_handler)

    async def on_shutdown(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.insert(0, on_shutdown)
    return hub
