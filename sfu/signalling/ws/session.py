"""One WebSocket client: its identity, its peer connection, and the slots that carry the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription

from sfu.errors import HttpError
from sfu.media.receiver import install_for_track
from sfu.media.switch import SwitchTrack
from sfu.rooms import RoomError, RoomRegistry, Subscription
from sfu.signalling.peer import create_peer_connection
from sfu.signalling.sdp import create_reoffer, extmap_ids, rtpmap_pts
from sfu.signalling.ws.messages import MessageRefused

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from sfu.signalling.ws.hub import WsHub



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

    async def close(self) -> None:
        """Nothing to close: the session owns the peer connection (subscribed with
        `owns_pc=False`)."""


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
            raise MessageRefused("already_joined", "this socket has already joined a room")
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
            raise MessageRefused("bad_state", "after the first exchange only the server offers")
        pc = self.pc = create_peer_connection(self.hub.settings)
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        pc.on("connectionstatechange", lambda: self.hub.spawn(self._on_state()))
        self.extmap, self.payload_types = extmap_ids(sdp), rtpmap_pts(sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError, AssertionError, TypeError) as err:
            await self._drop_pc()
            raise MessageRefused("bad_sdp", f"cannot use this offer: {err}") from err
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
            raise MessageRefused("bad_sdp", f"cannot answer this offer: {err}") from err
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
            raise MessageRefused("bad_state", "no offer is waiting for an answer")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, KeyError, IndexError, AssertionError, TypeError) as err:
            raise MessageRefused("bad_sdp", f"cannot use this answer: {err}") from err
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
            raise MessageRefused("unknown_participant", f"you are not receiving {identity!r}")
        pipeline = participant.pipeline
        if raw and not slot.raw:
            slot.raw_track = pipeline.raw_subscribe()
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
            free = next((s for s in self.slots if s.target is None), None)
            if free is None:
                track = SwitchTrack()
                transceiver = self.pc.addTransceiver(track, direction="sendonly")
                free = Slot(transceiver, track)
                self.slots.append(free)
            slot = free
            try:
                slot.subscription = self.registry.subscribe(
                    self.room, self.identity, identity, slot, owns_pc=False)
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
