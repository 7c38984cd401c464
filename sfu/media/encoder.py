"""One Opus encoder per speaker: mono 48 kHz, 20 ms packets, in-band FEC, VoIP mode.

The packets it returns are handed unchanged to every subscriber's RTCRtpSender, which packs
an `av.Packet` without re-encoding (aiortc's `OpusEncoder.pack`). Their `pts` count samples
at 48 kHz from the first frame and never go back, so every sender's RTP timestamps stay
monotonic, gaps included (a gap in pts is a gap in RTP time, which receivers conceal).
"""

from __future__ import annotations

import fractions

import av
import numpy as np

SAMPLE_RATE = 48_000
FRAME_SIZE = 960  # 20 ms
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
#: libopus's own default. Lower is cheaper (docs/benchmarks.md: time and quality per level).
DEFAULT_COMPLEXITY = 10


class OpusPacketEncoder:
    """Encode exact 20 ms mono float32 frames to Opus `av.Packet`s with 48 kHz pts."""

    #: Encoders created in this process so far (tests check: one per speaker, never per pair).
    instances_created = 0

    def __init__(self, bitrate: int = 32_000, packet_loss_percent: int = 10,
                 start_pts: int = 0, complexity: int = DEFAULT_COMPLEXITY) -> None:
        if not 6_000 <= bitrate <= 510_000:
            raise ValueError(f"Opus bitrate must be 6-510 kbit/s, got {bitrate}")
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be 0-10, got {complexity}")
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = SAMPLE_RATE
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.time_base = TIME_BASE
        codec.options = {
            "application": "voip",
            "frame_duration": "20",
            "fec": "1",
            "packet_loss": str(packet_loss_percent),
            "vbr": "on",
            "compression_level": str(complexity),  # FFmpeg's name for libopus's complexity
        }
        codec.open()
        self._codec: av.AudioCodecContext | None = codec
        self._next_pts = start_pts
        self.complexity = complexity
        self.frames_encoded = 0
        self.packets_out = 0
        OpusPacketEncoder.instances_created += 1

    @property
    def next_pts(self) -> int:
        """The pts (48 kHz samples) the next frame will get."""
        return self._next_pts

    def close(self) -> None:
        """Free the codec now rather than when the cycle collector finds its owner.

        PyAV encodes through a filter graph (its frame-size resampler) whose FFmpeg thread
        pool holds one thread per core; a speaker's pipeline sits in reference cycles
        (tasks, callbacks), so without this each departed speaker's threads and libopus state
        lived until the next full collection (`bench soak`: 2 threads per call that ended).
        """
        self._codec = None

    @property
    def closed(self) -> bool:
        return self._codec is None

    def skip(self, samples: int) -> None:
        """Leave a gap of `samples` in the timeline (publisher silent): pts jump, no packet."""
        if samples < 0:
            raise ValueError("cannot skip backwards")
        self._next_pts += samples

    def encode(self, samples: np.ndarray) -> list[av.Packet]:
        """Encode one 960-sample float32 frame; returns the packet(s) it produced."""
        if self._codec is None:
            raise RuntimeError("encode() on a closed Opus encoder")
        if samples.shape != (FRAME_SIZE,):
            raise ValueError(f"expected {FRAME_SIZE} mono samples, got shape {samples.shape}")
        pcm = np.clip(samples, -1.0, 1.0)
        pcm = np.round(pcm * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._next_pts
        self._next_pts += FRAME_SIZE
        packets = list(self._codec.encode(frame))
        if len(packets) > 1:  # libopus gives exactly one packet per 20 ms frame
            raise RuntimeError(f"Opus encoder returned {len(packets)} packets for one frame")
        for packet in packets:
            # libopus stamps packets by its own sample count (minus its pre-skip) and ignores
            # gaps in the input pts; stamp them with the frame's place on our timeline instead.
            packet.pts = packet.dts = frame.pts
            packet.time_base = TIME_BASE
        self.frames_encoded += 1
        self.packets_out += len(packets)
        return packets
