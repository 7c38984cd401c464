"""A low-latency receive path for audio: hand each Opus packet to the decoder as it arrives.

aiortc's RTCRtpReceiver gives audio a `JitterBuffer(capacity=16, prefetch=4)`: a packet is
released only once four later frames are buffered (80 ms at 20 ms packets), and a single lost
packet makes it wait until the buffer overflows (16 packets, 320 ms), after which it stays that
far behind (see docs/latency.md for the measurements). An SFU has no playout deadline to
smooth for: it should decode each packet at once and let the listener's jitter buffer do its
job. `ImmediateAudioJitterBuffer` does that: in-order packets go straight to the decoder,
late and duplicate ones are dropped and counted, and the arrival time of each packet is kept
so that the pipeline can measure server-added latency from the moment the packet arrived.

The patch is one attribute on one receiver (`install_low_latency_audio`); aiortc's decoder
thread, RTCP statistics and everything else stay as they are.

Bounded, counted receive path (issue 14): aiortc queues everything a receiver gets without
limit, whether or not anyone reads its track. So:
- a track the server consumes gets a bounded packet queue to its decoder thread and a bounded
  queue of decoded frames, both dropping the oldest when full (a reader that fell behind wants
  the newest audio, not a growing delay), counted;
- every other audio receiver (a WHEP `sendrecv` offer, extra m-lines, a WebSocket client
  without the publish grant) gets `DiscardJitterBuffer`: its packets are counted and never
  decoded or queued;
- every receiver and transport also gets the per-peer bounds of sfu/media/guards.py: a few
  SSRCs and a packet rate per receiver, an RTCP rate and a NACK-retransmission budget per peer;
- every outcome is a sample of `denoise_sfu_rtp_packets_total{outcome}` (sfu/media/metrics.py),
  decoded frames dropped are `denoise_sfu_frames_dropped_total{reason="receive_queue"}`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket
from prometheus_client import Counter

from sfu.media.guards import guard_rtcp, guard_rtp
from sfu.media.metrics import MetricsLike, rtp_packets

log = logging.getLogger(__name__)

_PRIVATE_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_PRIVATE_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_PRIVATE_STARTED = "_RTCRtpReceiver__started"
#: Decoded 20 ms frames (and undecoded packets) a consumed track may queue: 1 s. The bound is
#: for memory; latency is the pipeline's guard's job. Only an event loop stalled for longer
#: than this (the decoder threads go on meanwhile) makes it drop: 25 (500 ms) dropped audio
#: in tests on a 2-core machine under load 12.
DEFAULT_RECEIVE_QUEUE = 50
_RESET_DISTANCE = 1000  # a sequence jump back by more than this is a restarted sender
_FRAME = 960


class PacketArrivals:
    """Arrival time (time.monotonic) of recent packets, by their mapped RTP timestamp."""

    def __init__(self, keep: int = 256) -> None:
        self._times: OrderedDict[int, float] = OrderedDict()
        self._keep = keep

    def record(self, timestamp: int, arrived: float) -> None:
        self._times[timestamp] = arrived
        while len(self._times) > self._keep:
            self._times.popitem(last=False)

    def pop(self, timestamp: int | None) -> float | None:
        if timestamp is None:
            return None
        return self._times.pop(timestamp, None)


class ImmediateAudioJitterBuffer:
    """Drop-in for aiortc's audio JitterBuffer that releases every in-order packet at once.

    Timestamps are unwrapped (64-bit, starting at 0 and never decreasing), so aiortc's
    TimestampMapper after it is the identity and decoded frames carry these as their pts.
    """

    capacity = 1  # aiortc reads nothing else from a jitter buffer

    def __init__(self, counter: Counter | None = None) -> None:
        self.arrivals = PacketArrivals()
        self._counter = counter
        self._last_seq: int | None = None
        self._last_rtp_ts = 0
        self._last_out_ts = 0
        self.packets_in = 0
        self.packets_released = 0
        self.packets_late = 0  # arrived after a newer packet had been released (or duplicate)
        self.packets_missing = 0  # sequence numbers skipped over (lost, or late later)
        self.restarts = 0
        # (packet, unwrapped timestamp, arrival) -> whether to decode it; set by the pipeline
        # to forward payloads without decoding them (sfu.media.forward)
        self.tap: Callable[[RtpPacket, int, float], bool] | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.packets_in += 1
        arrived = time.monotonic()
        seq = packet.sequence_number
        if self._last_seq is None:
            out_ts = 0
        else:
            ahead = (seq - self._last_seq) & 0xFFFF
            if ahead == 0 or (ahead >= 0x8000 and 0x10000 - ahead <= _RESET_DISTANCE):
                self.packets_late += 1
                self._count("late")
                return False, None
            if ahead >= 0x8000:  # far behind: the sender restarted its sequence
                self.restarts += 1
                out_ts = self._last_out_ts + _FRAME
            else:
                self.packets_missing += ahead - 1
                if ahead > 1:
                    self._count("missing", ahead - 1)
                out_ts = self._last_out_ts + ((packet.timestamp - self._last_rtp_ts) & 0xFFFFFFFF)
        self._last_seq = seq
        self._last_rtp_ts = packet.timestamp
        self._last_out_ts = out_ts
        self.arrivals.record(out_ts, arrived)
        self.packets_released += 1
        self._count("released")
        if self.tap is not None and not self.tap(packet, out_ts, arrived):
            return False, None
        return False, JitterFrame(data=packet._data, timestamp=out_ts)  # type: ignore[attr-defined]

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._counter is not None:
            self._counter.labels(outcome=outcome).inc(n)


class DiscardJitterBuffer:
    """The jitter buffer of a receiver whose track nobody reads: counts packets, keeps none.

    Nothing reaches aiortc's decoder thread, so nothing is decoded or queued; RTCP receiver
    reports still go out (aiortc keeps its statistics before the jitter buffer).
    """

    capacity = 1

    def __init__(self, counter: Counter | None = None) -> None:
        self._unread = counter.labels(outcome="unread") if counter is not None else None
        self.packets_discarded = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.packets_discarded += 1
        if self._unread is not None:
            self._unread.inc()
        return False, None


class DropOldestQueue(asyncio.Queue):
    """The decoded-frame queue of a consumed track (aiortc's `RemoteStreamTrack._queue`):
    at most `limit` items; a new one pushes out the oldest, and `on_drop()` counts it.

    aiortc's decoder thread puts with `run_coroutine_threadsafe(queue.put(frame))`, so `put`
    must never wait (a waiting put per frame would be the unbounded queue again)."""

    def __init__(self, limit: int, on_drop: Callable[[], None] | None = None) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("a receive queue must hold at least one frame")
        self.limit = limit
        self.dropped = 0
        self._on_drop = on_drop

    def put_nowait(self, item: Any) -> None:
        while self.qsize() >= self.limit:
            self.get_nowait()
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
        super().put_nowait(item)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)


class DropOldestPacketQueue(queue.Queue):
    """The packet queue to aiortc's decoder thread, bounded the same way (thread-safe).

    `None` (aiortc's stop sentinel) always gets in."""

    def __init__(self, limit: int, on_drop: Callable[[], None] | None = None) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("a decoder queue must hold at least one packet")
        self.limit = limit
        self.dropped = 0
        self._on_drop = on_drop

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        dropped = 0
        with self.mutex:
            while item is not None and len(self.queue) >= self.limit \
                    and self.queue[0] is not None:
                self.queue.popleft()
                dropped += 1
            self._put(item)
            self.unfinished_tasks += 1 - dropped
            self.not_empty.notify()
        if dropped:
            self.dropped += dropped
            if self._on_drop is not None:
                for _ in range(dropped):
                    self._on_drop()


def _bound_queues(receiver: RTCRtpReceiver, limit: int, metrics: MetricsLike | None) -> bool:
    """Bound the decoder's packet queue and the track's frame queue (only possible before
    the receiver starts: aiortc hands both to its decoder thread then). False if too late."""
    if getattr(receiver, _PRIVATE_STARTED, True) or not hasattr(receiver, _PRIVATE_DECODER_QUEUE):
        log.warning("receiver already started: its queues stay as aiortc made them")
        return False
    counter = rtp_packets(metrics.registry) if metrics is not None else None
    packet_drop = counter.labels(outcome="decoder_queue_full").inc if counter else None
    frame_drop = metrics.frames_dropped.labels("receive_queue").inc if metrics else None
    setattr(receiver, _PRIVATE_DECODER_QUEUE, DropOldestPacketQueue(limit, packet_drop))
    receiver.track._queue = DropOldestQueue(limit, frame_drop)  # type: ignore[attr-defined]
    return True


def install_low_latency_audio(receiver: RTCRtpReceiver, metrics: MetricsLike | None = None,
                              max_queue: int = DEFAULT_RECEIVE_QUEUE
                              ) -> ImmediateAudioJitterBuffer:
    """Replace the audio jitter buffer of `receiver` (before or after media starts).

    Also attaches the arrival times to the receiver's track as `track.packet_arrivals`,
    where `SpeakerPipeline` finds them. Before the receiver starts (WHIP, WebSocket: right
    after the remote offer is set) its queues are also bounded to `max_queue`. With
    `metrics`, every packet's outcome is counted there.
    """
    track = receiver.track
    if track is None or track.kind != "audio":
        raise ValueError("install_low_latency_audio needs an audio receiver")
    if not hasattr(receiver, _PRIVATE_JITTER_BUFFER):
        raise RuntimeError("this aiortc version has no RTCRtpReceiver jitter buffer to replace")
    counter = rtp_packets(metrics.registry) if metrics is not None else None
    buffer = ImmediateAudioJitterBuffer(counter)
    setattr(receiver, _PRIVATE_JITTER_BUFFER, buffer)
    track.packet_arrivals = buffer.arrivals  # type: ignore[attr-defined]
    track.rtp_buffer = buffer  # type: ignore[attr-defined]
    if not getattr(receiver, _PRIVATE_STARTED, True):
        _bound_queues(receiver, max_queue, metrics)
    guard_rtp(receiver, counter)
    return buffer


def install_discard(receiver: RTCRtpReceiver, metrics: MetricsLike | None = None
                    ) -> DiscardJitterBuffer:
    """Make `receiver` drop (and count) everything it gets: nobody reads its track."""
    if not hasattr(receiver, _PRIVATE_JITTER_BUFFER):
        raise RuntimeError("this aiortc version has no RTCRtpReceiver jitter buffer to replace")
    current = getattr(receiver, _PRIVATE_JITTER_BUFFER)
    if isinstance(current, DiscardJitterBuffer):
        return current
    counter = rtp_packets(metrics.registry) if metrics is not None else None
    buffer = DiscardJitterBuffer(counter)
    setattr(receiver, _PRIVATE_JITTER_BUFFER, buffer)
    guard_rtp(receiver, counter)
    return buffer


def install_for_track(pc: RTCPeerConnection, track: MediaStreamTrack,
                      metrics: MetricsLike | None = None,
                      max_queue: int = DEFAULT_RECEIVE_QUEUE) -> ImmediateAudioJitterBuffer:
    """Convenience for `pc.on("track")`: find the receiver of `track` and install on it."""
    for receiver in pc.getReceivers():
        if receiver.track is track:
            return install_low_latency_audio(receiver, metrics, max_queue)
    raise ValueError("track does not belong to this peer connection")


def discard_unread(pc: RTCPeerConnection, keep: Iterable[MediaStreamTrack] = (),
                   metrics: MetricsLike | None = None) -> int:
    """Give every receiver of `pc` whose track is not in `keep` a `DiscardJitterBuffer`,
    and bound the RTCP of its transports (`guard_rtcp`). Idempotent: call it after each remote
    description. Returns how many receivers it changed."""
    guard_rtcp(pc, metrics)
    kept = {id(track) for track in keep}
    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver is None or receiver.track is None or id(receiver.track) in kept:
            continue
        if not isinstance(getattr(receiver, _PRIVATE_JITTER_BUFFER, None), DiscardJitterBuffer):
            install_discard(receiver, metrics)
            changed += 1
    return changed


def prepare_receivers(pc: RTCPeerConnection, publish: MediaStreamTrack | None,
                      metrics: MetricsLike | None = None,
                      max_queue: int = DEFAULT_RECEIVE_QUEUE
                      ) -> ImmediateAudioJitterBuffer | None:
    """After the remote offer is set, on a peer connection that only receives (WHIP): the one
    track the server consumes (`publish`, if any) gets the low-latency, bounded receive path;
    every other section is answered `inactive` (its sender stops; aiortc starts nothing for
    it) and discards whatever arrives anyway."""
    buffer = install_for_track(pc, publish, metrics, max_queue) if publish is not None else None
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.track is not publish:
            transceiver.direction = "inactive"
    discard_unread(pc, [publish] if publish is not None else [], metrics)
    return buffer


class RecordingJitterBuffer(JitterBuffer):
    """aiortc's own audio jitter buffer, unchanged, that also records packet arrival times.

    Only for measuring the default receive path (bench `--receive-path aiortc`): frames come
    out exactly as in stock aiortc, and the arrival times are keyed like its TimestampMapper
    (RTP timestamp minus the first one), which is what decoded frames carry as pts.
    """

    def __init__(self) -> None:
        super().__init__(capacity=16, prefetch=4)  # what RTCRtpReceiver gives audio
        self.arrivals = PacketArrivals()
        self._first_ts: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._first_ts is None:
            self._first_ts = packet.timestamp
        self.arrivals.record((packet.timestamp - self._first_ts) & 0xFFFFFFFF, time.monotonic())
        return super().add(packet)


def install_recording_default(receiver: RTCRtpReceiver) -> RecordingJitterBuffer:
    """Keep aiortc's audio jitter buffer behaviour but record arrivals (measurement only)."""
    if not hasattr(receiver, _PRIVATE_JITTER_BUFFER):
        raise RuntimeError("this aiortc version has no RTCRtpReceiver jitter buffer to replace")
    buffer = RecordingJitterBuffer()
    setattr(receiver, _PRIVATE_JITTER_BUFFER, buffer)
    receiver.track.packet_arrivals = buffer.arrivals  # type: ignore[attr-defined]
    return buffer
