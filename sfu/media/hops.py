"""Cut decoded audio into exact model hops, and join processed hops into codec frames.

Decoded Opus frames are 20 ms (960 samples at 48 kHz) but the model steps in 10 ms hops
(480 samples), and a publisher may send other frame sizes (10, 40, 60 ms). `HopCutter`
buffers whatever arrives and yields whole hops; `FrameAssembler` does the reverse for the
encoder. Both keep at most one hop (or one frame) of leftover samples, never more.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

HOP_SIZE = 480
FRAME_SIZE = 960


class _SampleQueue:
    """A float32 FIFO that only ever holds less than one chunk between calls."""

    def __init__(self, chunk: int) -> None:
        if chunk <= 0:
            raise ValueError(f"chunk size must be positive, got {chunk}")
        self.chunk = chunk
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples waiting for the next whole chunk."""
        return int(self._pending.shape[0])

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
        data = np.concatenate((self._pending, samples.astype(np.float32, copy=False)))
        whole = data.shape[0] - data.shape[0] % self.chunk
        self._pending = data[whole:].copy()
        for start in range(0, whole, self.chunk):
            yield data[start:start + self.chunk]

    def clear(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)


class HopCutter(_SampleQueue):
    """Turn arbitrary-length mono float32 blocks into exact `hop`-sample hops, in order."""

    def __init__(self, hop: int = HOP_SIZE) -> None:
        super().__init__(hop)


class FrameAssembler(_SampleQueue):
    """Join processed hops into exact `frame`-sample frames for the encoder, in order."""

    def __init__(self, frame: int = FRAME_SIZE) -> None:
        super().__init__(frame)


def to_mono_float(samples: np.ndarray, channels: int, planar: bool) -> np.ndarray:
    """Convert a PyAV s16/fltp sample array of `channels` channels to mono float32 in [-1, 1].

    Packed s16 arrives as shape (1, n*channels) interleaved; planar as (channels, n).
    """
    if samples.dtype == np.int16:
        data = samples.astype(np.float32) * (1.0 / 32768.0)
    elif samples.dtype == np.float32:
        data = samples
    else:
        raise ValueError(f"unsupported sample type {samples.dtype}")
    if planar:
        return data.mean(axis=0) if channels > 1 else data[0]
    flat = data.reshape(-1)
    if channels > 1:
        if flat.shape[0] % channels:
            raise ValueError("interleaved samples are not a whole number of channel frames")
        return flat.reshape(-1, channels).mean(axis=1)
    return flat


class FrameConverter:
    """Decoded `av.AudioFrame` -> mono float32 at 48 kHz; resamples only when it must."""

    def __init__(self, sample_rate: int = 48_000) -> None:
        self.sample_rate = sample_rate
        self._resampler: av.AudioResampler | None = None  # made on the first frame needing it
        self.resampled_frames = 0

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        fmt = frame.format.name
        channels = len(frame.layout.channels)
        if frame.sample_rate == self.sample_rate and fmt in ("s16", "s16p", "flt", "fltp"):
            return to_mono_float(frame.to_ndarray(), channels, frame.format.is_planar)
        import av  # only needed for the rare publisher that is not 48 kHz

        if self._resampler is None:
            # Keep the layout and average the channels ourselves, as on the 48 kHz path:
            # libswresample's own stereo-to-mono mix is 3 dB louder than the mean.
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name,
                                                rate=self.sample_rate)
        self.resampled_frames += 1
        parts = [to_mono_float(f.to_ndarray(), channels, True)
                 for f in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def close(self) -> None:
        """Free the resampler's filter graph (and its FFmpeg threads) now."""
        self._resampler = None
