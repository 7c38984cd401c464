"""Rooms and who is in them: the one place sessions are registered and torn down.

A `Room` holds `Participant`s (publishers, keyed by identity: one voice per identity) and
`Subscription`s (one listener receiving one participant's processed audio). The
`RoomRegistry` creates a room on first use and removes it as soon as it holds nothing, and
closes everything a session owns when it leaves (its pipeline, its peer connection, the
subscriptions to it), so rooms never leak.

API for other modules (WHIP/WHEP handlers, the WebSocket room protocol):
  registry.publish(room, identity, pc, track, mode)        -> Participant (replaces same identity)
  registry.subscribe(room, subscriber, target, pc)         -> Subscription (adds a track to pc)
  registry.leave(session_id)                               -> close one session (either kind)
  registry.set_mode(room, identity, mode)                  -> change denoising live
  registry.get(room) / registry.find(session_id) / registry.rooms()
  registry.add_listener(callback)                           -> RoomEvent on join/leave/mode
  await registry.close()                                    -> everything, on shutdown

`publish` and `subscribe` do no network I/O: callers do the SDP exchange around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import MediaStreamTrack, RTCPeerConnection

from denoiser.stream.modes import MODES

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    """What the registry needs of `sfu.media.pipeline.SpeakerPipeline`."""

    mode: str
    stream: Any  # the DenoisedStream it runs hops through

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self) -> MediaStreamTrack: ...

    def unsubscribe(self, track: MediaStreamTrack) -> None: ...

    def raw_subscribe(self) -> MediaStreamTrack: ...


class TrackSender(Protocol):
    """What carries one subscription's track to its listener (aiortc's `RTCRtpSender` names)."""

    def replaceTrack(self, track: MediaStreamTrack) -> None: ...


class TrackSink(Protocol):
    """Where one subscription's packets go: an `RTCPeerConnection`, a WHEP subscriber's
    `WhepSender`, or a slot of a WebSocket session (aiortc's camelCase names, so a plain
    peer connection fits as it is)."""

    def addTrack(self, track: MediaStreamTrack) -> TrackSender: ...

    async def close(self) -> None: ...


#: Builds the pipeline of one published track: (track, engine stream id, mode) -> pipeline.
PipelineFactory = Callable[[MediaStreamTrack, str, str], Pipeline]


class RoomError(Exception):
    """A registry operation cannot be done; `code` says why (see subclasses)."""

    code = "room_error"


class UnknownRoom(RoomError):
    code = "unknown_room"


class UnknownParticipant(RoomError):
    code = "unknown_participant"


class RoomFull(RoomError):
    code = "room_full"


class OwnVoice(RoomError):
    code = "own_voice"


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class Participant:
    """A publisher: one identity's voice in a room, processed once by its pipeline."""

    room: str
    identity: str
    session_id: str
    pc: RTCPeerConnection
    pipeline: Pipeline
    stream_id: str
    owns_pc: bool = True

    @property
    def mode(self) -> str:
        return self.pipeline.mode


@dataclass(eq=False)
class Subscription:
    """One listener receiving one participant's processed audio through `sender`."""

    room: str
    subscriber: str
    target: str
    session_id: str
    pc: TrackSink
    sender: TrackSender
    track: MediaStreamTrack
    owns_pc: bool = True


@dataclass(frozen=True)
class RoomEvent:
    """Something listeners may want to tell clients: kind is joined, left, or mode.

    A `left` the server caused says why in `reason` (`pipeline_failed`, `track_ended`) and
    names the session."""

    kind: str
    room: str
    identity: str
    mode: str | None = None
    reason: str | None = None
    session_id: str | None = None


@dataclass(eq=False)
class Room:
    name: str
    participants: dict[str, Participant] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.participants and not self.subscriptions

    @property
    def session_count(self) -> int:
        return len(self.participants) + len(self.subscriptions)


class RoomRegistry:
    """All rooms of this node."""

    def __init__(self, pipeline_factory: PipelineFactory, max_sessions_per_room: int = 64,
                 on_pipeline_stopped: Callable[[Participant], None] | None = None) -> None:
        """`on_pipeline_stopped(participant)` runs after a pipeline stops (release its engine
        stream, take its final counters)."""
        self._factory = pipeline_factory
        self._on_stopped = on_pipeline_stopped
        self._max_sessions = max_sessions_per_room
        self._rooms: dict[str, Room] = {}
        self._sessions: dict[str, Participant | Subscription] = {}
        self._listeners: list[Callable[[RoomEvent], None]] = []
        self._closing: set[asyncio.Task[None]] = set()

    # -- queries ---------------------------------------------------------------------------
    def get(self, room: str) -> Room | None:
        return self._rooms.get(room)

    def rooms(self) -> Iterator[Room]:
        return iter(list(self._rooms.values()))

    def find(self, session_id: str) -> Participant | Subscription | None:
        return self._sessions.get(session_id)

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def participant_count(self) -> int:
        return sum(len(r.participants) for r in self._rooms.values())

    @property
    def subscription_count(self) -> int:
        return sum(len(r.subscriptions) for r in self._rooms.values())

    # -- events ----------------------------------------------------------------------------
    def add_listener(self, callback: Callable[[RoomEvent], None]) -> None:
        """Call `callback(event)` (synchronously; keep it quick) on join, leave and mode."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[RoomEvent], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _emit(self, event: RoomEvent) -> None:
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                log.exception("room listener failed", extra={"room": event.room})

    # -- changes ---------------------------------------------------------------------------
    def _room_for_new_session(self, name: str, replacing: bool = False) -> Room:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name)
        elif room.session_count - int(replacing) >= self._max_sessions:
            raise RoomFull(f"room {name!r} already has {room.session_count} sessions")
        return room

    def publish(self, room_name: str, identity: str, pc: RTCPeerConnection,
                track: MediaStreamTrack, mode: str = "auto", session_id: str | None = None,
                owns_pc: bool = True) -> Participant:
        """Register `identity`'s published `track` and start its pipeline.

        A participant already publishing with that identity is replaced: its listeners are
        moved to the new pipeline (same sender, new track) and the old session is closed.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        existing = self._rooms.get(room_name)
        old = existing.participants.get(identity) if existing else None
        room = self._room_for_new_session(room_name, replacing=old is not None)
        session_id = session_id or new_session_id()
        stream_id = f"{room_name}/{identity}/{session_id}"
        try:
            pipeline = self._factory(track, stream_id, mode)
        except Exception:
            if room.empty:
                self._rooms.pop(room_name, None)
            raise
        participant = Participant(room_name, identity, session_id, pc, pipeline, stream_id,
                                  owns_pc)
        room.participants[identity] = participant
        self._sessions[session_id] = participant
        # SpeakerPipeline says when it gave up after a failure, or its track ended: the
        # participant is removed (never left registered and silent).
        if hasattr(pipeline, "on_failure"):
            setattr(pipeline, "on_failure",  # noqa: B010 (not every Pipeline has it)
                    lambda exc, sid=session_id: self._pipeline_failed(sid, exc))
        if hasattr(pipeline, "on_ended"):
            setattr(pipeline, "on_ended",  # noqa: B010
                    lambda sid=session_id: self._close_later(
                        self._leave_quietly(sid, "track_ended")))
        pipeline.start()
        if old is not None:
            self._sessions.pop(old.session_id, None)
            for sub in room.subscriptions.values():
                if sub.target == identity:
                    old.pipeline.unsubscribe(sub.track)
                    sub.track = pipeline.subscribe()
                    sub.sender.replaceTrack(sub.track)
            self._close_later(self._close_participant(old))
            log.info("participant replaced", extra={"room": room_name, "identity": identity,
                                                    "session": session_id})
        else:
            log.info("participant joined", extra={"room": room_name, "identity": identity,
                                                  "session": session_id, "mode": mode})
        self._emit(RoomEvent("joined", room_name, identity, mode))
        return participant

    def subscribe(self, room_name: str, subscriber: str, target: str, pc: TrackSink,
                  session_id: str | None = None, owns_pc: bool = True) -> Subscription:
        """Add `target`'s processed audio to `pc` (before the caller creates its answer)."""
        if subscriber == target:
            raise OwnVoice("a listener never receives their own voice")
        room = self._rooms.get(room_name)
        if room is None:
            raise UnknownRoom(f"no room {room_name!r}")
        participant = room.participants.get(target)
        if participant is None:
            raise UnknownParticipant(f"no participant {target!r} in room {room_name!r}")
        self._room_for_new_session(room_name)
        track = participant.pipeline.subscribe()
        try:
            sender = pc.addTrack(track)
        except Exception:
            participant.pipeline.unsubscribe(track)
            raise
        session_id = session_id or new_session_id()
        sub = Subscription(room_name, subscriber, target, session_id, pc, sender, track, owns_pc)
        room.subscriptions[session_id] = sub
        self._sessions[session_id] = sub
        log.info("subscribed", extra={"room": room_name, "identity": subscriber,
                                      "target": target, "session": session_id})
        return sub

    def set_mode(self, room_name: str, identity: str, mode: str) -> None:
        """Switch a participant's denoising live (auto, on, off)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        room = self._rooms.get(room_name)
        participant = room.participants.get(identity) if room else None
        if participant is None:
            raise UnknownParticipant(f"no participant {identity!r} in room {room_name!r}")
        participant.pipeline.mode = mode
        self._emit(RoomEvent("mode", room_name, identity, mode))

    def _pipeline_failed(self, session_id: str, exc: BaseException) -> None:
        """A participant's pipeline gave up: remove the participant (listeners are told with
        a `left` event whose reason is `pipeline_failed`)."""
        log.error("removing a participant whose pipeline failed",
                  extra={"session": session_id, "error": repr(exc)})
        self._close_later(self._leave_quietly(session_id, "pipeline_failed"))

    async def _leave_quietly(self, session_id: str, reason: str) -> None:
        await self.leave(session_id, reason)

    async def leave(self, session_id: str, reason: str | None = None) -> bool:
        """Close one session and everything it owns; False if it was not (or no longer) here.
        `reason` (the server's, not the client's) goes into the `left` event."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        room = self._rooms.get(session.room)
        if isinstance(session, Participant):
            dependants: list[Subscription] = []
            if room is not None and room.participants.get(session.identity) is session:
                del room.participants[session.identity]
                dependants = [s for s in room.subscriptions.values()
                              if s.target == session.identity]
                for sub in dependants:
                    del room.subscriptions[sub.session_id]
                    self._sessions.pop(sub.session_id, None)
            self._drop_if_empty(session.room)
            log.info("participant left", extra={"room": session.room,
                                                "identity": session.identity,
                                                "session": session_id})
            self._emit(RoomEvent("left", session.room, session.identity, reason=reason,
                                 session_id=session_id))
            for sub in dependants:
                await self._close_subscription(sub, session.pipeline)
            await self._close_participant(session)
        else:
            if room is not None:
                room.subscriptions.pop(session_id, None)
            self._drop_if_empty(session.room)
            publisher = room.participants.get(session.target) if room else None
            await self._close_subscription(session, publisher.pipeline if publisher else None)
        return True

    async def close(self) -> None:
        """Close every session (server shutdown)."""
        for session_id in list(self._sessions):
            await self.leave(session_id)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- internals -------------------------------------------------------------------------
    def _drop_if_empty(self, name: str) -> None:
        room = self._rooms.get(name)
        if room is not None and room.empty:
            del self._rooms[name]

    def _close_later(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_participant(self, participant: Participant) -> None:
        try:
            await participant.pipeline.stop()
        except Exception:
            log.exception("pipeline stop failed", extra={"session": participant.session_id})
        if self._on_stopped is not None:
            try:
                self._on_stopped(participant)
            except Exception:
                log.exception("pipeline release failed",
                              extra={"session": participant.session_id})
        if participant.owns_pc:
            await participant.pc.close()

    async def _close_subscription(self, sub: Subscription, pipeline: Pipeline | None) -> None:
        if pipeline is not None:
            pipeline.unsubscribe(sub.track)
        sub.track.stop()
        if sub.owns_pc:
            await sub.pc.close()
