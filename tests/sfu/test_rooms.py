"""RoomRegistry with real pipelines (SpeakerPipeline + DenoisedStream + LocalEngine) and real,
unconnected aiortc peer connections: membership, events, replacement, limits, no leaks."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from denoiser.engine.local import LocalEngine
from denoiser.stream import DenoisedStream
from sfu.media.pipeline import SpeakerPipeline
from sfu.metrics import Metrics
from sfu.rooms import (
    OwnVoice,
    Participant,
    RoomEvent,
    RoomFull,
    RoomRegistry,
    UnknownParticipant,
    UnknownRoom,
)


@pytest.fixture
def registry(gain_engine: LocalEngine) -> RoomRegistry:
    metrics = Metrics()

    def factory(track, stream_id: str, mode: str) -> SpeakerPipeline:
        return SpeakerPipeline(track, DenoisedStream(gain_engine, stream_id, mode=mode), metrics)

    def release(participant: Participant) -> None:
        participant.pipeline.stream.close()

    return RoomRegistry(factory, max_sessions_per_room=3, on_pipeline_stopped=release)


async def test_membership_events_and_cleanup(registry: RoomRegistry,
                                             gain_engine: LocalEngine) -> None:
    events: list[RoomEvent] = []
    registry.add_listener(events.append)
    alice = registry.publish("r", "alice", RTCPeerConnection(), AudioStreamTrack(), "auto")
    registry.publish("r", "bob", RTCPeerConnection(), AudioStreamTrack(), "off")
    assert gain_engine.live_streams == 2 and registry.participant_count == 2
    sub = registry.subscribe("r", "bob", "alice", RTCPeerConnection())
    assert registry.find(sub.session_id) is sub and alice.pipeline.subscriber_count == 1
    with pytest.raises(RoomFull):
        registry.publish("r", "carol", RTCPeerConnection(), AudioStreamTrack())
    with pytest.raises(OwnVoice):
        registry.subscribe("r", "alice", "alice", RTCPeerConnection())
    with pytest.raises(UnknownParticipant):
        registry.subscribe("r", "alice", "nobody", RTCPeerConnection())
    with pytest.raises(UnknownRoom):
        registry.subscribe("elsewhere", "alice", "bob", RTCPeerConnection())
    registry.set_mode("r", "alice", "off")
    assert alice.pipeline.stream.mode == "off"
    with pytest.raises(ValueError):
        registry.set_mode("r", "alice", "loud")

    assert await registry.leave(alice.session_id)
    assert not await registry.leave(alice.session_id)
    # her listener went with her; bob is still there; her engine slot is free
    assert registry.find(sub.session_id) is None and sub.pc.connectionState == "closed"
    assert alice.pc.connectionState == "closed"
    assert list(registry.get("r").participants) == ["bob"]
    assert gain_engine.live_streams == 1
    await registry.close()
    assert registry.room_count == 0 and gain_engine.live_streams == 0
    assert [(e.kind, e.identity, e.mode) for e in events] == [
        ("joined", "alice", "auto"), ("joined", "bob", "off"), ("mode", "alice", "off"),
        ("left", "alice", None), ("left", "bob", None)]


async def test_same_identity_replaces_and_moves_listeners(registry: RoomRegistry,
                                                          gain_engine: LocalEngine) -> None:
    first = registry.publish("r", "alice", RTCPeerConnection(), AudioStreamTrack())
    sub = registry.subscribe("r", "bob", "alice", RTCPeerConnection())
    old_track = sub.track
    second = registry.publish("r", "alice", RTCPeerConnection(), AudioStreamTrack(), "on")
    assert registry.get("r").participants["alice"] is second
    assert registry.find(first.session_id) is None
    assert sub.track is not old_track and sub.sender.track is sub.track
    assert second.pipeline.subscriber_count == 1
    await registry.close()  # also waits for the replaced session's teardown
    assert first.pc.connectionState == "closed" and first.pipeline.subscriber_count == 0
    assert gain_engine.live_streams == 0 and registry.room_count == 0


async def test_failed_pipeline_leaves_no_empty_room(gain_engine: LocalEngine) -> None:
    def factory(track, stream_id: str, mode: str) -> SpeakerPipeline:
        raise RuntimeError("no capacity")

    registry = RoomRegistry(factory)
    with pytest.raises(RuntimeError):
        registry.publish("r", "alice", RTCPeerConnection(), AudioStreamTrack())
    assert registry.room_count == 0
    with pytest.raises(ValueError):
        registry.publish("r", "alice", RTCPeerConnection(), AudioStreamTrack(), "loud")
