"""Forward a publisher's own Opus payloads where nothing would change them (mode `off`).

A stream in mode `off` goes out as it came in, so decoding it, running it through the delay
line and encoding it again costs most of a core's share per participant and only loses
quality. `ForwardGate` decides, per RTP packet as it arrives (before aiortc's decoder thread
sees it), whether the packet is forwarded as it is, decoded for the pipeline, or both:

- mode `off`, once the pipeline has processed one frame in that mode (the stream has
  crossfaded onto its raw path): forward, do not decode. Packets sent to the decoder whose
  frames the pipeline has not finished yet go out first, forwarded too, so that no
  re-encoded packet ever follows a forwarded one (their frames are then not encoded);
- mode `on`/`auto` after forwarding: keep forwarding while also decoding for as many frames
  as the stream's delay line holds (`latency_samples`), so that the first re-encoded frame
  carries fresh audio, never what the delay line held before forwarding began;
- otherwise: decode only.

Forwarded and re-encoded packets share one timeline: the publisher's unwrapped RTP
timestamps (the pts of the decoded frames too), so the subscriber's senders number and stamp
them as one stream. An encoded frame whose slot was already filled by a forwarded payload is
not encoded at all (`covers`). Each direction of a switch moves the audio by the model's
latency once (re-encoded output is delayed by it, forwarded output is not): at on -> off the
delay line's last `latency_samples` are skipped, at off -> on they are heard twice.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

FRAME_SAMPLES = 960  # 20 ms at 48 kHz
_KEEP_RANGES = 64
_KEEP_DECODED = 16  # payloads of packets sent to the decoder, kept for a switch to forwarding

# Samples per Opus frame by TOC configuration (RFC 6716, 3.1), at 48 kHz.
_CONFIG_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK NB, MB, WB: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid SWB, FB: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT NB, WB, SWB, FB: 2.5, 5, 10, 20 ms
)


def opus_packet_samples(payload: bytes) -> int:
    """Duration of one Opus packet in 48 kHz samples, from its TOC byte (0 if malformed)."""
    if not payload:
        return 0
    toc = payload[0]
    per_frame = _CONFIG_SAMPLES[toc >> 3]
    code = toc & 0x3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(payload) < 2:
            return 0
        frames = payload[1] & 0x3F
    samples = per_frame * frames
    return samples if samples <= 5760 else 0  # at most 120 ms per packet


class Payload(NamedTuple):
    """One publisher packet as forwarded: its timeline position, duration, bytes, level."""

    timestamp: int
    samples: int
    data: bytes
    audio_level: int | None  # -dBov from the publisher's header extension, if it sent one


class ForwardGate:
    """Per-speaker decision: forward the publisher's payload, decode it, or both."""

    def __init__(self, latency_samples: int = 0) -> None:
        # Frames to decode before re-encoded output may replace forwarding again.
        self.refresh_frames = -(-max(0, latency_samples) // FRAME_SAMPLES)
        self.forwarding = False
        self._off_processed = False  # the pipeline processed a frame in mode off
        self._refresh_until: int | None = None  # forward (and decode) packets before this ts
        self._processed_to: int | None = None  # end of the last frame the pipeline processed
        self._decoding: deque[Payload] = deque(maxlen=_KEEP_DECODED)
        self._ranges: deque[tuple[int, int]] = deque(maxlen=_KEEP_RANGES)
        self.packets_forwarded = 0
        self.switches = 0

    def frame_processed(self, mode: str, end: int | None = None) -> None:
        """The pipeline finished one decoded frame in `mode`, ending at `end` (48 kHz)."""
        self._off_processed = mode == "off"
        if end is not None:
            self._processed_to = end

    def route(self, packet: Payload, mode: str) -> tuple[list[Payload], bool]:
        """(what to forward now, in order; whether to decode `packet`)."""
        if mode == "off":
            self._refresh_until = None
            if self.forwarding:
                self._mark(packet)
                return [packet], False
            if self._off_processed:
                self.forwarding = True
                self.switches += 1
                done = self._processed_to
                backlog = [p for p in self._decoding if done is None or p.timestamp >= done]
                self._decoding.clear()
                for earlier in backlog:
                    self._mark(earlier)
                self._mark(packet)
                return [*backlog, packet], False
            self._decoding.append(packet)
            return [], True
        self._off_processed = False
        if self.forwarding:
            self.forwarding = False
            self.switches += 1
            self._refresh_until = packet.timestamp + self.refresh_frames * FRAME_SAMPLES
        self._decoding.append(packet)
        if self._refresh_until is not None:
            if packet.timestamp < self._refresh_until:
                self._mark(packet)
                return [packet], True
            self._refresh_until = None
        return [], True

    def _mark(self, packet: Payload) -> None:
        self.packets_forwarded += 1
        timestamp = packet.timestamp
        end = timestamp + max(packet.samples, 1)
        if self._ranges and self._ranges[-1][1] == timestamp:
            self._ranges[-1] = (self._ranges[-1][0], end)
        else:
            self._ranges.append((timestamp, end))

    def covers(self, pts: int, samples: int = FRAME_SAMPLES) -> bool:
        """Whether a forwarded payload already went out for any of [pts, pts + samples)."""
        end = pts + samples
        return any(start < end and pts < stop for start, stop in reversed(self._ranges))

    def forwarded_through(self, start: int, stop: int) -> bool:
        """Whether forwarded payloads filled the whole gap [start, stop) on the timeline."""
        if stop <= start:
            return True
        for first, last in self._ranges:
            if first <= start < last:
                start = last
                if start >= stop:
                    return True
        return False
