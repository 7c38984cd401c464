"""One WebSocket client: its identity, its peer connection, and the slots that carry the others.

Resources a session holds are reclaimed whatever the client does (issue 14):
- its peer connection must reach `connected` within `settings.connect_timeout` of the join,
  else the session ends (`bye` reason `connect_timeout`, close code 4408, counted
  `peer_failures_total{reason="timeout"}`), releasing its participant, engine slot and peer;
- `close` takes the session lock, so a close during the first offer (a re-join, a shutdown)
  waits for it and then tears down whatever it created (no leaked UDP sockets or participant);
- every receiver it does not consume discards its packets (sfu.media.receiver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription

from sfu.errors import HttpError
from sfu.media.datagram_guard import guard_datagrams
from sfu.media.receiver import discard_unread, install_for_track
from sfu.media.switch import SwitchTrack
from sfu.rooms import RoomError, RoomRegistry, Subscription
from sfu.signalling.peer import check_media_sections, create_peer_connection
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
    media_connected: bool = False
    inbound: MediaStreamTrack | None = None  # the client's track the server reads (publishing)
    deadline: asyncio.Task[None] | None = None

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
        if kind == "leave":  # not under the lock: ending the session takes it (in `close`)
            if not self.closed:
                await self.send({"type": "bye", "reason": "left"})
                await self.hub.end(self, None)
            return
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

    async def _on_offer(self, sdp: str) -> None:
        if self.offered_first:
            raise MessageRefused("bad_state", "after the first exchange only the server offers")
        try:
            check_media_sections(sdp)
        except HttpError as err:
            raise MessageRefused("bad_sdp", err.message) from err
        pc = self.pc = create_peer_connection(self.hub.settings)
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        pc.on("connectionstatechange", lambda: self.hub.spawn(self._on_state()))
        self.extmap, self.payload_types = extmap_ids(sdp), rtpmap_pts(sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as err:  # aiortc's parser raises anything (AttributeError, ...)
            await self._drop_pc()
            raise MessageRefused("bad_sdp", f"cannot use this offer: "
                                 f"{str(err)[:200] or type(err).__name__}") from err
        if self.closed:  # closed while the offer was set: `close` tears down what we made
            return
        audio = [t for t in tracks if t.kind == "audio"]
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio" or (len(audio) > 1 and transceiver.receiver.track \
                    is not audio[0]):
                transceiver.direction = "inactive"
        publishing = bool(audio) and "publish" in self.grants
        settings = self.hub.settings
        if publishing:
            install_for_track(pc, audio[0], self.hub.metrics, settings.receive_queue_frames)
        # Audio nobody will read (no publish grant, extra sections) is dropped, not queued.
        discard_unread(pc, audio[:1] if publishing else [], self.hub.metrics)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as err:  # as above: the offer it answers came from the network
            await self._drop_pc()
            raise MessageRefused("bad_sdp", f"cannot answer this offer: "
                                 f"{str(err)[:200] or type(err).__name__}") from err
        guard_datagrams(pc, self.hub.metrics)  # its ICE sockets exist now
        if self.closed:
            return
        if publishing:
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
                self.inbound = audio[0]
            if self.inbound is None:  # not published after all: nobody reads it
                discard_unread(pc, [], self.hub.metrics)
        self.offered_first = True
        await self.send({"type": "answer", "sdp": pc.localDescription.sdp})
        await self._sync()

    async def _on_answer(self, sdp: str) -> None:
        if not self.offer_out or self.pc is None:
            raise MessageRefused("bad_state", "no offer is waiting for an answer")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as err:  # as above
            raise MessageRefused("bad_sdp", f"cannot use this answer: "
                                 f"{str(err)[:200] or type(err).__name__}") from err
        if self.pc is None:
            return
        discard_unread(self.pc, [self.inbound] if self.inbound is not None else [],
                       self.hub.metrics)
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
        if self.pc is None:
            return
        if self.pc.connectionState == "connected":
            self.media_connected = True
            self._cancel_deadline()
        if self.pc.connectionState == "failed" and not self.closed:
            await self.send({"type": "bye", "reason": "peer_failed"})
            await self.hub.end(self, 4000)

    # -- media-connect deadline --------------------------------------------------------------
    def start_deadline(self, seconds: float) -> None:
        """End the session unless its peer connection is connected within `seconds`."""
        self._cancel_deadline()
        self.deadline = asyncio.ensure_future(self._expire(seconds))

    def _cancel_deadline(self) -> None:
        task, self.deadline = self.deadline, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.closed or self.media_connected:
            return
        self.deadline = None  # this task is ending the session; `close` must not cancel it
        self.hub.count_peer_failure("timeout")
        log.info("ws peer never connected", extra={"room": self.room,
                                                   "identity": self.identity,
                                                   "offered": self.offered_first})
        await self.send({"type": "bye", "reason": "connect_timeout"})
        await self.hub.end(self, 4408)

    async def publish_ended(self, reason: str) -> None:
        """The server removed this client's participant (its pipeline failed, or its track
        ended): say so (`bye` with `reason`) and end the session (close code 4500)."""
        if self.closed:
            return
        self.publish_session = None  # already gone from the registry
        await self.send({"type": "bye", "reason": reason})
        await self.hub.end(self, 4500)

    async def _drop_pc(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def close(self) -> None:
        """Leave the registry and close the peer connection (idempotent).

        Marks the session closed at once (an offer in progress stops at its next step), then
        waits for the lock: whatever that offer created (its peer connection, its
        participant) exists by then and is torn down here."""
        if self.closed:
            return
        self.closed = True
        self._cancel_deadline()
        async with self.lock:
            await self._teardown()

    async def _teardown(self) -> None:
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
