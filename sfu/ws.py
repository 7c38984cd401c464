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
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription

from sfu.auth import authorize, check_name, issue_token, verify_token
from sfu.errors import HttpError, NotFound
from sfu.media.receiver import install_for_track
from sfu.media.switch import SwitchTrack
from sfu.peer import create_peer_connection
from sfu.rooms import RoomError, RoomEvent, RoomRegistry, Subscription
from sfu.settings import MODES

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024  # larger text messages get an error and are dropped
HARD_MAX_MESSAGE_BYTES = 1024 * 1024  # larger frames close the socket (aiohttp, code 1009)
JOIN_TIMEOUT_S = 10.0
RATE_LIMIT_PER_S = 50
DEMO_TOKEN_TTL_S = 3600


class ProtocolError(Exception):
    """A message is refused: answered with `{"type": "error", code, message}`."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code  # set when the session cannot go on


# -- message validation ---------------------------------------------------------------------

_FIELDS: dict[str, dict[str, type]] = {
    "join": {"token": str},
    "offer": {"sdp": str},
    "answer": {"sdp": str},
    "set_mode": {"mode": str},
    "listen": {"identity": str, "raw": bool},
    "leave": {},
}


def parse_message(text: str) -> dict[str, Any]:
    """The validated message in `text`, or ProtocolError."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large",
                            f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(text)
    except ValueError as err:
        raise ProtocolError("bad_json", f"not valid JSON: {err}") from err
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "a message needs a string 'type'")
    if kind not in _FIELDS:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    for name, expected in _FIELDS[kind].items():
        if not isinstance(message.get(name), expected):
            raise ProtocolError("bad_message",
                                f"'{kind}' needs '{name}' ({expected.__name__})")
    mode = message.get("mode", "auto")
    if kind in ("join", "set_mode") and mode not in MODES:
        raise ProtocolError("bad_message", f"mode must be one of {', '.join(MODES)}")
    return message


# -- SDP: keep the header extension IDs the client chose --------------------------------------

def extmap_ids(sdp: str) -> dict[str, int]:
    """URI -> ID of every `a=extmap` line (one ID per URI across a BUNDLE)."""
    ids: dict[str, int] = {}
    for line in sdp.splitlines():
        if line.startswith("a=extmap:"):
            key, _, uri = line[len("a=extmap:"):].partition(" ")
            with contextlib.suppress(ValueError):
                ids.setdefault(uri.strip(), int(key.split("/")[0]))
    return ids


def rtpmap_pts(sdp: str) -> dict[str, int]:
    """Codec (`opus/48000/2`, lower case) -> the payload type of its first `a=rtpmap`."""
    pts: dict[str, int] = {}
    for line in sdp.splitlines():
        if line.startswith("a=rtpmap:"):
            key, _, codec = line[len("a=rtpmap:"):].partition(" ")
            with contextlib.suppress(ValueError):
                pts.setdefault(codec.strip().lower(), int(key))
    return pts


def pin_payload_types(sdp: str, client: dict[str, int]) -> str:
    """`sdp` with each codec's payload type renumbered to the client's.

    aiortc's createOffer renumbers codecs with its own payload types, and its receiver keeps
    the payload types of the first negotiation: a re-offer must keep the client's numbers.
    """
    ours = rtpmap_pts(sdp)
    used = set(ours.values())
    mapping: dict[int, int] = {}
    for codec, pt in ours.items():
        wanted = client.get(codec)
        if wanted is not None and wanted != pt and wanted not in used:
            mapping[pt] = wanted
    if not mapping:
        return sdp
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [str(mapping.get(int(f), f)) if f.isdigit() else f
                                         for f in parts[3:]])
        else:
            for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
                if line.startswith(prefix):
                    key, sep, rest = line[len(prefix):].partition(" ")
                    if key.isdigit() and int(key) in mapping:
                        line = f"{prefix}{mapping[int(key)]}{sep}{rest}"
        out.append(line)
    return "\r\n".join(out)


def pin_extmap_ids(sdp: str, ids: dict[str, int]) -> str:
    """`sdp` with each extension renumbered to the ID the client chose; others dropped.

    aiortc's createOffer numbers header extensions its own way every time; a browser refuses
    a re-offer that renumbers an extension of an active m-section ("RTP extension ID
    reassignment not supported"), so server offers reuse the client's numbering.
    """
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=extmap:"):
            uri = line[len("a=extmap:"):].partition(" ")[2].strip()
            if uri not in ids:
                continue
            line = f"a=extmap:{ids[uri]} {uri}"
        out.append(line)
    return "\r\n".join(out)


async def create_reoffer(pc: RTCPeerConnection, extmap: dict[str, int],
                         payload_types: dict[str, int]) -> RTCSessionDescription:
    """A server re-offer in the client's numbering, in the SDP and inside aiortc.

    aiortc's createOffer gives every transceiver aiortc's own payload types and extension IDs
    until the answer comes back. A receiver that starts inside that window (its DTLS handshake
    finishing after the re-offer went out) registers those numbers for good and drops every
    packet the client sends under its own: seen with Chromium 156, whose Opus at 111 met a
    receiver listening for 96, and the publisher went unheard for the whole call. So the
    transceivers negotiated before keep their codecs and extensions across createOffer
    (aiortc issue #686 reports the extension-ID half of this renumbering).
    """
    negotiated = {t: (t._codecs, t._headerExtensions) for t in pc.getTransceivers()
                  if t._codecs}
    offer = await pc.createOffer()
    for transceiver, (codecs, extensions) in negotiated.items():
        transceiver._codecs, transceiver._headerExtensions = codecs, extensions
    return RTCSessionDescription(
        sdp=pin_payload_types(pin_extmap_ids(offer.sdp, extmap), payload_types), type="offer")


# -- a sender's track that outlives the speakers it carries -----------------------------------

@dataclass(eq=False)
class Slot:
    """One `sendonly` transceiver of a session, carrying one other participant (or nobody)."""

    transceiver: RTCRtpTransceiver
    track: SwitchTrack
    target: str | None = None
    subscription: Subscription | None = None
    raw: bool = False
    raw_track: MediaStreamTrack | None = None

    # The registry treats what it is given as a peer connection and its sender: it calls
    # `addTrack` once and `replaceTrack` when the target republishes.
    def addTrack(self, track: MediaStreamTrack) -> Slot:
        self.track.set_source(track)
        return self

    def replaceTrack(self, track: MediaStreamTrack) -> None:
        if not self.raw:
            self.track.set_source(track)


# -- one client ----------------------------------------------------------------------------

@dataclass(eq=False)
class Session:
    """One WebSocket client: its identity, its peer connection and its slots."""

    hub: WsHub
    ws: web.WebSocketResponse
    room: str = ""
    identity: str = ""
    mode: str = "auto"
    grants: frozenset[str] = frozenset()
    pc: RTCPeerConnection | None = None
    publish_session: str | None = None
    slots: list[Slot] = field(default_factory=list)
    offered_first: bool = False  # the client's one offer was answered
    extmap: dict[str, int] = field(default_factory=dict)  # from the client's offer
    payload_types: dict[str, int] = field(default_factory=dict)  # from the client's offer
    offer_out: bool = False  # a server offer waits for its answer
    dirty: bool = False  # the room changed while an offer was out
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def registry(self) -> RoomRegistry:
        return self.hub.registry

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_json(message)

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    # -- messages ----------------------------------------------------------------------------
    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "join":
            raise ProtocolError("already_joined", "this socket has already joined a room")
        async with self.lock:
            if self.closed:
                return
            if kind == "offer":
                await self._on_offer(message["sdp"])
            elif kind == "answer":
                await self._on_answer(message["sdp"])
            elif kind == "set_mode":
                self._on_set_mode(message["mode"])
            elif kind == "listen":
                await self._on_listen(message["identity"], message["raw"])
            elif kind == "leave":
                await self.send({"type": "bye", "reason": "left"})
                await self.hub.end(self, None)

    async def _on_offer(self, sdp: str) -> None:
        if self.offered_first:
            raise ProtocolError("bad_state", "after the first exchange only the server offers")
        pc = self.pc = create_peer_connection(self.hub.settings)
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        pc.on("connectionstatechange", lambda: self.hub.spawn(self._on_state()))
        self.extmap, self.payload_types = extmap_ids(sdp), rtpmap_pts(sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError, AssertionError, TypeError) as err:
            await self._drop_pc()
            raise ProtocolError("bad_sdp", f"cannot use this offer: {err}") from err
        audio = [t for t in tracks if t.kind == "audio"]
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio" or (len(audio) > 1 and transceiver.receiver.track \
                    is not audio[0]):
                transceiver.direction = "inactive"
        if audio and "publish" in self.grants:
            install_for_track(pc, audio[0])
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, KeyError, AssertionError) as err:
            await self._drop_pc()
            raise ProtocolError("bad_sdp", f"cannot answer this offer: {err}") from err
        if audio and "publish" in self.grants:
            try:
                participant = self.registry.publish(self.room, self.identity, pc, audio[0],
                                                    self.mode, owns_pc=False)
            except (RoomError, HttpError) as err:
                await self.error(getattr(err, "code", "room_error"), str(err))
            except Exception as err:  # EngineFull and the like: the caller still gets audio
                log.warning("ws publish failed", extra={"room": self.room, "error": str(err)})
                await self.error("unavailable", f"cannot publish: {err}")
            else:
                self.publish_session = participant.session_id
        self.offered_first = True
        await self.send({"type": "answer", "sdp": pc.localDescription.sdp})
        await self._sync()

    async def _on_answer(self, sdp: str) -> None:
        if not self.offer_out or self.pc is None:
            raise ProtocolError("bad_state", "no offer is waiting for an answer")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, KeyError, IndexError, AssertionError, TypeError) as err:
            raise ProtocolError("bad_sdp", f"cannot use this answer: {err}") from err
        self.offer_out = False
        await self.send(self.hub.participants_message(self))
        if self.dirty:
            await self._sync()

    def _on_set_mode(self, mode: str) -> None:
        self.mode = mode
        if self.publish_session is not None and self.registry.find(self.publish_session):
            self.registry.set_mode(self.room, self.identity, mode)  # emits a "mode" event
        else:
            self.hub.broadcast_participants(self.room)

    async def _on_listen(self, identity: str, raw: bool) -> None:
        slot = next((s for s in self.slots if s.target == identity), None)
        room = self.registry.get(self.room)
        participant = room.participants.get(identity) if room else None
        if slot is None or slot.subscription is None or participant is None:
            raise ProtocolError("unknown_participant", f"you are not receiving {identity!r}")
        pipeline = participant.pipeline
        if raw and not slot.raw:
            raw_subscribe: Callable[[], MediaStreamTrack] = pipeline.raw_subscribe  # type: ignore[attr-defined]
            slot.raw_track = raw_subscribe()
            slot.raw = True
            slot.track.set_source(slot.raw_track)
        elif not raw and slot.raw:
            slot.raw = False
            slot.track.set_source(slot.subscription.track)
            if slot.raw_track is not None:
                pipeline.unsubscribe(slot.raw_track)
                slot.raw_track = None
        await self.send({"type": "listening", "identity": identity, "raw": slot.raw})

    # -- negotiation ---------------------------------------------------------------------------
    async def sync(self) -> None:
        """Match the slots to the room (called on room events)."""
        async with self.lock:
            if not self.closed:
                await self._sync()

    async def _sync(self) -> None:
        if self.pc is None or not self.offered_first or "subscribe" not in self.grants:
            self.hub.broadcast_participants(self.room)
            return
        if self.offer_out:
            self.dirty = True
            return
        self.dirty = False
        room = self.registry.get(self.room)
        present = dict(room.participants) if room else {}
        changed = False
        for slot in self.slots:
            gone = slot.target is not None and (
                slot.target not in present or slot.subscription is None
                or self.registry.find(slot.subscription.session_id) is None)
            if gone:
                await self._clear(slot)
                changed = True
        carried = {s.target for s in self.slots if s.target is not None}
        for identity in present:
            if identity == self.identity or identity in carried:
                continue
            slot = next((s for s in self.slots if s.target is None), None)
            if slot is None:
                track = SwitchTrack()
                transceiver = self.pc.addTransceiver(track, direction="sendonly")
                slot = Slot(transceiver, track)
                self.slots.append(slot)
            try:
                slot.subscription = self.registry.subscribe(
                    self.room, self.identity, identity, slot, owns_pc=False)  # type: ignore[arg-type]
            except RoomError as err:
                await self.error(err.code, str(err))
                continue
            slot.target = identity
            slot.transceiver.direction = "sendonly"
            changed = True
        if changed:
            await self.pc.setLocalDescription(
                await create_reoffer(self.pc, self.extmap, self.payload_types))
            self.offer_out = True
            await self.send({"type": "offer", "sdp": self.pc.localDescription.sdp})
        else:
            await self.send(self.hub.participants_message(self))

    async def _clear(self, slot: Slot) -> None:
        slot.track.set_source(None)
        if slot.raw_track is not None:
            slot.raw_track.stop()
        if slot.subscription is not None:
            await self.registry.leave(slot.subscription.session_id)
        slot.target, slot.subscription, slot.raw, slot.raw_track = None, None, False, None
        slot.transceiver.direction = "inactive"

    async def _on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState == "failed":
            await self.send({"type": "bye", "reason": "peer_failed"})
            await self.hub.end(self, 4000)

    async def _drop_pc(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def close(self) -> None:
        """Leave the registry and close the peer connection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            slot.track.set_source(None)
            if slot.subscription is not None:
                await self.registry.leave(slot.subscription.session_id)
            if slot.raw_track is not None:
                slot.raw_track.stop()
            slot.track.stop()
        if self.publish_session is not None:
            await self.registry.leave(self.publish_session)
        await self._drop_pc()


# -- all sockets of one app ------------------------------------------------------------------

class WsHub:
    """The sessions of one app, keyed by room and identity; listens to the registry."""

    def __init__(self, registry: RoomRegistry, settings: Any) -> None:
        self.registry = registry
        self.settings = settings
        self.demo_tokens: bool = bool(getattr(settings, "demo_tokens", False))
        self.rooms: dict[str, dict[str, Session]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Placement (sfu.placement.gate): called with (session, room) on join; it raises
        # ProtocolError to send the client to the room's owner, or to say "try later".
        self.place: Callable[[Session, str], Any] | None = None
        registry.add_listener(self._on_room_event)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_room_event(self, event: RoomEvent) -> None:
        for session in list(self.rooms.get(event.room, {}).values()):
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

    async def join(self, session: Session, message: dict[str, Any]) -> None:
        secret = self.settings.secret
        try:
            claims = verify_token(secret, message["token"])
        except HttpError as err:
            raise ProtocolError("unauthorized", err.message, 4401) from err
        if not claims.grants:
            raise ProtocolError("forbidden", "the token grants neither publish nor subscribe",
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
        room[claims.identity] = session
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
                    raise ProtocolError("rate_limited", "too many messages; slow down")
                if msg.type != WSMsgType.TEXT:
                    raise ProtocolError("bad_message", "only JSON text messages are accepted")
                message = parse_message(msg.data)
                if not joined:
                    if message["type"] != "join":
                        raise ProtocolError("not_joined", "send 'join' first")
                    await hub.join(session, message)
                    joined = True
                else:
                    await session.handle(message)
            except ProtocolError as err:
                await session.error(err.code, err.message)
                if err.close_code is not None:
                    await ws.close(code=err.close_code, message=err.code.encode())
                    break
            except Exception:
                log.exception("ws message failed", extra={"room": session.room})
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

    try:
        body = await request.json()
    except ValueError as err:
        raise BadRequest("body must be JSON {room, name}") from err
    if not isinstance(body, dict):
        raise BadRequest("body must be JSON {room, name}")
    room, name = body.get("room"), body.get("name")
    try:
        check_name("room", room)  # type: ignore[arg-type]
        check_name("name", name)  # type: ignore[arg-type]
    except ValueError as err:
        raise BadRequest(str(err), "bad_name") from err
    identity = f"{name[:54]}-{secrets.token_hex(2)}"  # type: ignore[index]
    ttl = min(DEMO_TOKEN_TTL_S, int(getattr(hub.settings, "token_ttl", DEMO_TOKEN_TTL_S)))
    token = issue_token(hub.settings.secret, room, identity, ttl=ttl)  # type: ignore[arg-type]
    return web.json_response({"token": token, "identity": identity, "room": room})


def setup(app: web.Application) -> WsHub:
    """Mount `GET /ws` and `POST /demo/token` on an app made by `sfu.app.create_app`."""
    from sfu.app import CONTEXT

    ctx = app[CONTEXT]
    hub = WsHub(ctx.registry, ctx.settings)
    from sfu.placement.gate import ws_placer

    hub.place = ws_placer(ctx)
    app[WS_HUB] = hub
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/demo/token", demo_token_handler)

    async def on_shutdown(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.insert(0, on_shutdown)
    return hub
