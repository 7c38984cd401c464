"""WHIP publish (RFC 9725) and WHEP subscribe handlers, non-trickle.

  POST   /whip/{room}[?mode=auto|on|off]     -> 201, Location /whip/{room}/{session}
  POST   /whep/{room}/{identity}             -> 201, Location /whep/{room}/{identity}/{session}
  DELETE <Location>                          -> 200, the session and all it owns are closed
                                                (200 "ended" if the server closed it already)
  PATCH  <Location>                          -> 405 (no trickle ICE, no ICE restart)
  OPTIONS on each                            -> 204 with CORS and Accept-Post

The 201 carries the answer as exactly `Content-Type: application/sdp`, `Location`, an `ETag`,
and one `Link: <url>; rel="ice-server"` per configured STUN/TURN server. docs/whip-whep.md
checks all of it against RFC 9725 and the WHEP draft, point by point.

Checks run cheapest first and before any peer connection exists: 401 token, 403 room/grant/
identity, 400 mode, then placement (307 to the node that owns the room, 503 + Retry-After when
placement is unavailable), 404 room/participant, 415 content type/encoding/charset, 413 size,
408 a body that does not arrive in time (sfu.signalling.body), 429 a session cap
(sfu.limits), then 400 SDP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection
from multidict import CIMultiDict

from denoiser.engine import EngineError, EngineFull
from denoiser.stream.modes import MODES
from sfu.auth import Claims, authenticate, authorize
from sfu.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from sfu.limits import SessionLimits, SessionSlot
from sfu.media.datagram_guard import guard_datagrams
from sfu.media.receiver import discard_unread, prepare_receivers
from sfu.media.switch import SwitchTrack
from sfu.placement.gate import place_join
from sfu.rooms import (
    OwnVoice,
    Participant,
    RoomFull,
    Subscription,
    UnknownParticipant,
    UnknownRoom,
    new_session_id,
)
from sfu.signalling.body import SDP_TYPE, read_sdp
from sfu.signalling.ledger import Issued, SessionLedger
from sfu.signalling.links import ice_server_links
from sfu.signalling.peer import answer, apply_offer, create_peer_connection

if TYPE_CHECKING:
    from sfu.context import SfuContext

log = logging.getLogger(__name__)
S = TypeVar("S", Participant, Subscription)

# PATCH (trickle ICE, ICE restart) is answered 405, so it is not listed as allowed.
SESSION_METHODS = "DELETE, OPTIONS"
ENDPOINT_METHODS = "POST, OPTIONS"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post",
    "Access-Control-Max-Age": "600",
}


class WhepSender:
    """A WHEP subscriber's peer connection as the registry sees it (`addTrack`,
    `replaceTrack`, `close`).

    The RTCRtpSender keeps one `SwitchTrack` for its whole life and only the source under it
    changes, because aiortc's sender stops for good when its track ends: a speaker who
    republishes (new pipeline, the old track ends) must not silence the listener.
    """

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.track = SwitchTrack()
        pc.addTrack(self.track)

    def addTrack(self, track: MediaStreamTrack) -> WhepSender:
        self.track.set_source(track)
        return self

    def replaceTrack(self, track: MediaStreamTrack) -> None:
        self.track.set_source(track)

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()


class WhipHandlers:
    """The WHIP/WHEP endpoints of one app, bound to its context."""

    def __init__(self, ctx: SfuContext, limits: SessionLimits) -> None:
        self.ctx = ctx
        self.limits = limits
        self._watchers: set[asyncio.Task[None]] = set()
        self.ledger = SessionLedger(ttl=max(3600.0, float(ctx.settings.token_ttl)))
        ctx.metrics.sessions_remembered.set_function(lambda: len(self.ledger))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/whip/{room}", self.publish),
            web.options("/whip/{room}", self.options_endpoint),
            web.delete("/whip/{room}/{session}", self.delete_publish),
            web.patch("/whip/{room}/{session}", self.patch_session),
            web.options("/whip/{room}/{session}", self.options_session),
            web.post("/whep/{room}/{identity}", self.subscribe),
            web.options("/whep/{room}/{identity}", self.options_endpoint),
            web.delete("/whep/{room}/{identity}/{session}", self.delete_subscribe),
            web.patch("/whep/{room}/{identity}/{session}", self.patch_session),
            web.options("/whep/{room}/{identity}/{session}", self.options_session),
        ]

    async def close(self) -> None:
        """Stop the connection watchdogs (app shutdown)."""
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    # -- WHIP ------------------------------------------------------------------------------
    async def publish(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        room = request.match_info["room"]
        claims = authenticate(request, ctx.settings.secret)
        authorize(claims, room, "publish")
        mode = request.query.get("mode", "auto")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}, not {mode!r}", "bad_mode")
        await place_join(ctx, room, request.path_qs, create=True)  # 307 / 503 if not here
        sdp = await read_sdp(request, ctx.settings.max_sdp_bytes, ctx.settings.body_timeout)
        pc = self._new_peer(self.limits.acquire(room, claims.identity, request.remote))
        tracks: list = []
        pc.on("track", tracks.append)
        session_id = new_session_id()
        try:
            await apply_offer(pc, sdp)
            audio = [t for t in tracks if t.kind == "audio"]
            if not audio:
                raise BadRequest("the offer sends no audio (direction must be sendonly or "
                                 "sendrecv)", "bad_sdp")
            # Decode each packet as it arrives, bounded; other audio sections: discarded.
            prepare_receivers(pc, audio[0], ctx.metrics, ctx.settings.receive_queue_frames)
            answer_sdp = await answer(pc)
            guard_datagrams(pc, ctx.metrics)  # its ICE sockets exist now
            try:
                ctx.registry.publish(room, claims.identity, pc, audio[0], mode, session_id)
            except RoomFull as err:
                raise ServiceUnavailable(str(err), err.code) from err
            except EngineFull as err:
                raise ServiceUnavailable(f"no denoising capacity left: {err}",
                                         "engine_full") from err
            except EngineError as err:
                raise ServiceUnavailable(f"denoising engine unavailable: {err}",
                                         "engine_unavailable") from err
        except BaseException:
            await pc.close()
            raise
        self._watch(pc, session_id, "publisher")
        self.ledger.add(session_id, Issued("publisher", room, claims.identity))
        return self._created(answer_sdp, f"/whip/{room}/{session_id}", session_id)

    async def delete_publish(self, request: web.Request) -> web.Response:
        ended = self._ended_session(request, Issued("publisher", request.match_info["room"], ""))
        if ended is not None:
            return ended
        session = self._own_session(request, Participant)
        await self.ctx.registry.leave(session.session_id)
        self.ledger.pop(session.session_id)
        return web.json_response({"status": "left"})

    # -- WHEP ------------------------------------------------------------------------------
    async def subscribe(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        room, target = request.match_info["room"], request.match_info["identity"]
        claims = authenticate(request, ctx.settings.secret)
        authorize(claims, room, "subscribe")
        if target == claims.identity:
            raise Forbidden("a listener never receives their own voice", "own_voice")
        await place_join(ctx, room, request.path_qs, create=False)  # 307 / 503 if not here
        self._require_participant(room, target)
        sdp = await read_sdp(request, ctx.settings.max_sdp_bytes, ctx.settings.body_timeout)
        self._require_participant(room, target)  # it may have left while the body arrived
        pc = self._new_peer(self.limits.acquire(room, claims.identity, request.remote))
        session_id = new_session_id()
        registered = False
        sender: WhepSender | None = None
        try:
            await apply_offer(pc, sdp)
            discard_unread(pc, (), ctx.metrics)  # a sendrecv offer's audio: nobody reads it
            sender = WhepSender(pc)
            try:
                ctx.registry.subscribe(room, claims.identity, target, sender, session_id)
            except OwnVoice as err:
                raise Forbidden(str(err), err.code) from err
            except (UnknownRoom, UnknownParticipant) as err:
                raise NotFound(str(err), err.code) from err
            except RoomFull as err:
                raise ServiceUnavailable(str(err), err.code) from err
            registered = True
            answer_sdp = await answer(pc)
            guard_datagrams(pc, ctx.metrics)  # its ICE sockets exist now
            transceiver = next((t for t in pc.getTransceivers()
                                if t.sender.track is sender.track), None)
            if transceiver is None or transceiver.currentDirection not in ("sendonly",
                                                                          "sendrecv"):
                raise BadRequest("the offer does not receive audio (direction must be "
                                 "recvonly or sendrecv)", "bad_sdp")
        except BaseException:
            if registered:
                await ctx.registry.leave(session_id)
            if sender is not None:
                await sender.close()
            await pc.close()  # the offer was refused before a sender existed: close it too
            raise
        self._watch(pc, session_id, "subscriber")
        self.ledger.add(session_id, Issued("subscriber", room, claims.identity, target))
        return self._created(answer_sdp, f"/whep/{room}/{target}/{session_id}", session_id)

    async def delete_subscribe(self, request: web.Request) -> web.Response:
        ended = self._ended_session(request, Issued(
            "subscriber", request.match_info["room"], "", request.match_info["identity"]))
        if ended is not None:
            return ended
        session = self._own_session(request, Subscription)
        if session.target != request.match_info["identity"]:
            raise NotFound("no such session", "unknown_session")
        await self.ctx.registry.leave(session.session_id)
        self.ledger.pop(session.session_id)
        return web.json_response({"status": "left"})

    # -- shared ----------------------------------------------------------------------------
    async def patch_session(self, request: web.Request) -> web.Response:
        raise MethodNotAllowed("this server does not support trickle ICE or ICE restarts",
                               "trickle_not_supported", headers={"Allow": "DELETE, OPTIONS"})

    async def options_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={
            **CORS_HEADERS, "Access-Control-Allow-Methods": ENDPOINT_METHODS,
            "Allow": ENDPOINT_METHODS, "Accept-Post": SDP_TYPE})

    async def options_session(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={
            **CORS_HEADERS, "Access-Control-Allow-Methods": SESSION_METHODS,
            "Allow": SESSION_METHODS})

    def _new_peer(self, slot: SessionSlot) -> RTCPeerConnection:
        """A peer connection for a new session, holding `slot` until it closes."""
        try:
            pc = create_peer_connection(self.ctx.settings)
        except BaseException:
            slot.release()
            raise
        slot.release_on_close(pc)
        return pc

    def _require_participant(self, room: str, identity: str) -> None:
        found = self.ctx.registry.get(room)
        if found is None:
            raise NotFound(f"no room {room!r}", "unknown_room")
        if identity not in found.participants:
            raise NotFound(f"no participant {identity!r} in room {room!r}",
                           "unknown_participant")

    def _own_session(self, request: web.Request, kind: type[S]) -> S:
        """The session named by the URL, if the bearer token is its owner's."""
        room, session_id = request.match_info["room"], request.match_info["session"]
        claims: Claims = authenticate(request, self.ctx.settings.secret)
        if claims.room != room:
            raise Forbidden(f"token is for room {claims.room!r}, not {room!r}", "wrong_room")
        session = self.ctx.registry.find(session_id)
        if not isinstance(session, kind) or session.room != room:
            raise NotFound("no such session", "unknown_session")
        owner = session.identity if isinstance(session, Participant) else session.subscriber
        if owner != claims.identity:
            raise Forbidden("this session belongs to another identity", "wrong_identity")
        return session

    def _ended_session(self, request: web.Request, url: Issued) -> web.Response | None:
        """The answer to a DELETE of a session this server created and has closed already
        (its publisher left, its peer failed): 200 "ended" for its owner, 403 for others;
        None while the session is live or unknown (the normal path decides)."""
        session_id = request.match_info["session"]
        if self.ctx.registry.find(session_id) is not None:
            return None
        claims = authenticate(request, self.ctx.settings.secret)
        if claims.room != url.room:
            raise Forbidden(f"token is for room {claims.room!r}, not {url.room!r}", "wrong_room")
        issued = self.ledger.get(session_id)
        if issued is None or (issued.kind, issued.room, issued.target) != (
                url.kind, url.room, url.target):
            raise NotFound("no such session", "unknown_session")
        if issued.owner != claims.identity:
            raise Forbidden("this session belongs to another identity", "wrong_identity")
        self.ledger.pop(session_id)
        return web.json_response({"status": "ended"})

    def _created(self, sdp: str, location: str, session_id: str) -> web.Response:
        # `body=` with an explicit header: `text=` would make it "application/sdp;
        # charset=utf-8", a parameter RFC 8866 does not define for application/sdp.
        headers = CIMultiDict({"Content-Type": SDP_TYPE, "Location": location,
                               "ETag": f'"{session_id}"', **CORS_HEADERS})
        for link in ice_server_links(self.ctx.settings.ice_servers):
            headers.add("Link", link)
        return web.Response(status=201, body=sdp.encode("utf-8"), headers=headers)

    def _watch(self, pc: RTCPeerConnection, session_id: str, role: str) -> None:
        """Leave the session when its peer fails, closes, or never connects in time."""
        ctx = self.ctx

        async def deadline() -> None:
            await asyncio.sleep(ctx.settings.connect_timeout)
            if await ctx.registry.leave(session_id):
                ctx.metrics.peer_failures.labels("timeout").inc()
                log.info("peer never connected", extra={"session": session_id, "role": role})

        task = asyncio.ensure_future(deadline())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":  # not on "closed": the deadline's own leave closes the
                task.cancel()         # peer, and cancelling it there lost its count
            if state in ("failed", "closed") and await ctx.registry.leave(session_id):
                if state == "failed":
                    ctx.metrics.peer_failures.labels("failed").inc()
                log.info("peer gone", extra={"session": session_id, "role": role,
                                             "state": state})

        pc.on("connectionstatechange", on_state)
