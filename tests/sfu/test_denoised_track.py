"""`DenoisedAudioTrack`: the library face of the audio path (any aiortc track in, denoised out)."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from denoiser.stream import DenoisedStream
from sfu.media.denoised_track import DenoisedAudioTrack


class ArrayTrack(MediaStreamTrack):
    """Plays a float signal as stereo s16 frames of `frame` samples at `rate`, then ends."""

    kind = "audio"

    def __init__(self, signal: np.ndarray, rate: int, frame: int) -> None:
        super().__init__()
        self.signal, self.rate, self.frame, self.pos = signal, rate, frame, 0

    async def recv(self) -> av.AudioFrame:
        if self.pos >= self.signal.size:
            self.stop()
            raise MediaStreamError
        chunk = self.signal[self.pos:self.pos + self.frame]
        stereo = np.repeat((chunk * 32767).astype(np.int16), 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = self.rate, self.pos
        frame.time_base = fractions.Fraction(1, self.rate)
        self.pos += chunk.size
        return frame


async def collect(track: MediaStreamTrack) -> np.ndarray:
    frames = []
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            break
        assert (frame.sample_rate, frame.samples, frame.format.name) == (48_000, 960, "s16")
        assert frame.pts == 960 * len(frames)
        frames.append(frame.to_ndarray().reshape(-1).astype(np.float32) / 32767)
    return np.concatenate(frames)


@pytest.mark.parametrize("frame", [960, 480, 2880])
async def test_frames_come_out_denoised_and_delayed(gain_engine, frame: int) -> None:
    t = np.arange(48_000) / 48_000
    signal = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stream = DenoisedStream(gain_engine, f"lib-{frame}", mode="on", deadline=None)
    track = DenoisedAudioTrack(ArrayTrack(signal, 48_000, frame), stream)
    out = await collect(track)
    assert out.size == signal.size  # 1 s in, 1 s out (50 frames)
    delay = gain_engine.latency_samples  # the gain engine halves its input, 240 samples late
    np.testing.assert_allclose(out[delay:], 0.5 * signal[:-delay], atol=2e-4)
    assert stream.counters["denoised"] == 100
    track.stop()
    assert gain_engine.live_streams == 0


async def test_other_rates_are_resampled_and_video_is_refused(gain_engine) -> None:
    signal = (0.3 * np.sin(2 * np.pi * 300 * np.arange(16_000) / 16_000)).astype(np.float32)
    stream = DenoisedStream(gain_engine, "lib-16k", mode="off", deadline=None)
    out = await collect(DenoisedAudioTrack(ArrayTrack(signal, 16_000, 320), stream))
    assert abs(out.size - 48_000) <= 960  # the resampler may hold back part of a frame
    assert abs(float(np.sqrt(np.mean(out[4800:-4800] ** 2))) - 0.3 / np.sqrt(2)) < 0.01
    # every hop is counted; at most one waits in the assembler for its frame's second half
    assert 0 <= stream.counters["mode_off"] - out.size // 480 <= 1

    class Video(MediaStreamTrack):
        kind = "video"

        async def recv(self) -> av.VideoFrame:
            raise MediaStreamError

    with pytest.raises(ValueError, match="audio"):
        DenoisedAudioTrack(Video(), stream)
