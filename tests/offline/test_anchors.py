"""RNNoise and DFN3 anchors: the real native runtimes on real audio (shipped in tests/data)."""

from __future__ import annotations

import numpy as np
import pytest

from denoiser.eval.anchors import AnchorError, DFN3Anchor, RNNoiseAnchor, make_anchor, measure_delay
from support.sample_audio import noise_48k, speech_48k

ANCHOR_TYPES = [RNNoiseAnchor, DFN3Anchor]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """4 s of clean 48 kHz speech (VCTK p286)."""
    return speech_48k()[: 4 * 48_000]


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    """3 s of a real recorded noise (kitchen dishes), at a normal level."""
    audio = noise_48k()[48_000: 4 * 48_000]
    return (audio * (0.05 / np.sqrt(np.mean(audio**2)))).astype(np.float32)


def _db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_delay_constant_matches_measurement(anchor_type: type, speech: np.ndarray) -> None:
    with anchor_type() as anchor:
        assert anchor.frame_size == 480
        assert measure_delay(anchor, speech) == anchor.delay_samples


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_process_keeps_length_and_is_aligned(anchor_type: type, speech: np.ndarray) -> None:
    audio = speech[: 2 * 48_000 + 123]  # not a whole number of frames
    with anchor_type() as anchor:
        out = anchor.process(audio)
    assert out.shape == audio.shape and out.dtype == np.float32
    # Clean speech passes nearly unchanged and in time: correlation at lag 0 is high,
    # and far higher than one frame off.
    def corr(lag: int) -> float:
        a, b = audio[: audio.size - lag], out[lag:]
        return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))

    assert corr(0) > 0.8
    assert corr(0) > corr(480) + 0.2


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_attenuates_noise_only_input(anchor_type: type, noise: np.ndarray) -> None:
    with anchor_type() as anchor:
        out = anchor.process(noise)
    tail = slice(48_000, None)  # after both have adapted
    assert _db(out[tail]) < _db(noise[tail]) - 10.0


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_frame_stream_equals_offline(anchor_type: type, speech: np.ndarray) -> None:
    """`process_frame` (what the throughput benchmark times) is the same algorithm."""
    audio = speech[: 48_000]
    with anchor_type() as anchor:
        offline = anchor.process(audio)
        anchor.reset()
        frames = [anchor.process_frame(audio[i:i + 480]) for i in range(0, audio.size, 480)]
    streamed = np.concatenate(frames)[anchor.delay_samples:]
    np.testing.assert_allclose(streamed, offline[: streamed.size], atol=1e-5)


@pytest.mark.parametrize("anchor_type", ANCHOR_TYPES)
def test_bad_input_is_refused(anchor_type: type) -> None:
    with anchor_type() as anchor:
        with pytest.raises(AnchorError, match="480"):
            anchor.process_frame(np.zeros(100, dtype=np.float32))
        with pytest.raises(AnchorError, match="mono"):
            anchor.process(np.zeros((2, 480), dtype=np.float32))
        with pytest.raises(AnchorError, match="NaN"):
            anchor.process(np.full(480, np.nan, dtype=np.float32))
        with pytest.raises(AnchorError, match="float"):
            anchor.process(np.zeros(480, dtype=np.int16))
    with pytest.raises(AnchorError, match="after close"):
        anchor.process_frame(np.zeros(480, dtype=np.float32))


def test_make_anchor_by_name() -> None:
    assert isinstance(make_anchor("rnnoise"), RNNoiseAnchor)
    with pytest.raises(AnchorError, match="unknown anchor"):
        make_anchor("nope")
