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
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

_PRIVATE_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
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

    def __init__(self) -> None:
        self.arrivals = PacketArrivals()
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
                return False, None
            if ahead >= 0x8000:  # far behind: the sender restarted its sequence
                self.restarts += 1
                out_ts = self._last_out_ts + _FRAME
            else:
                self.packets_missing += ahead - 1
                out_ts = self._last_out_ts + ((packet.timestamp - self._last_rtp_ts) & 0xFFFFFFFF)
        self._last_seq = seq
        self._last_rtp_ts = packet.timestamp
        self._last_out_ts = out_ts
        self.arrivals.record(out_ts, arrived)
        self.packets_released += 1
        if self.tap is not None and not self.tap(packet, out_ts, arrived):
            return False, None
        return False, JitterFrame(data=packet._data, timestamp=out_ts)  # type: ignore[attr-defined]


def install_low_latency_audio(receiver: RTCRtpReceiver) -> ImmediateAudioJitterBuffer:
    """Replace the audio jitter buffer of `receiver` (before or after media starts).

    Also attaches the arrival times to the receiver's track as `track.packet_arrivals`,
    where `SpeakerPipeline` finds them.
    """
    track = receiver.track
    if track is None or track.kind != "audio":
        raise ValueError("install_low_latency_audio needs an audio receiver")
    if not hasattr(receiver, _PRIVATE_JITTER_BUFFER):
        raise RuntimeError("this aiortc version has no RTCRtpReceiver jitter buffer to replace")
    buffer = ImmediateAudioJitterBuffer()
    setattr(receiver, _PRIVATE_JITTER_BUFFER, buffer)
    track.packet_arrivals = buffer.arrivals  # type: ignore[attr-defined]
    track.rtp_buffer = buffer  # type: ignore[attr-defined]
    return buffer


def install_for_track(pc: RTCPeerConnection, track: MediaStreamTrack
                      ) -> ImmediateAudioJitterBuffer:
    """Convenience for `pc.on("track")`: find the receiver of `track` and install on it."""
    for receiver in pc.getReceivers():
        if receiver.track is track:
            return install_low_latency_audio(receiver)
    raise ValueError("track does not belong to this peer connection")


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
