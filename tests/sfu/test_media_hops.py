"""Hop cutter / frame assembler: exact sizes, order kept, nothing lost or invented."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from sfu.media.hops import FrameAssembler, FrameConverter, HopCutter


@pytest.mark.parametrize("seed", range(20))
def test_cutter_then_assembler_is_identity_for_any_chunking(seed: int) -> None:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal(int(rng.integers(0, 20_000))).astype(np.float32)
    cutter, assembler = HopCutter(480), FrameAssembler(960)
    hops, frames = [], []
    pos = 0
    while pos < signal.shape[0]:
        size = int(rng.choice([0, 1, 7, 479, 480, 481, 960, 1920, 2881]))
        chunk = signal[pos:pos + size]
        pos += size
        for hop in cutter.push(chunk):
            assert hop.shape == (480,) and hop.dtype == np.float32
            hops.append(hop)
            frames.extend(assembler.push(hop))
        assert cutter.pending < 480 and assembler.pending < 960
    whole_hops = signal.shape[0] // 480
    assert len(hops) == whole_hops
    assert cutter.pending == signal.shape[0] - whole_hops * 480
    np.testing.assert_array_equal(np.concatenate([signal[:0], *hops]), signal[:whole_hops * 480])
    assert all(f.shape == (960,) for f in frames)
    np.testing.assert_array_equal(np.concatenate([signal[:0], *frames]),
                                  signal[:len(frames) * 960])
    assert len(frames) == whole_hops // 2


def test_cutter_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="mono"):
        list(HopCutter().push(np.zeros((2, 480), dtype=np.float32)))


def _frame(samples: np.ndarray, fmt: str, layout: str, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout=layout)
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, rate)
    return frame


def test_converter_downmixes_aiortc_stereo_s16() -> None:
    left = np.full(960, 16384, dtype=np.int16)
    right = np.zeros(960, dtype=np.int16)
    interleaved = np.stack([left, right], axis=1).reshape(1, -1)
    out = FrameConverter().convert(_frame(interleaved, "s16", "stereo", 48_000))
    assert out.shape == (960,) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25)


def test_converter_resamples_other_rates() -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16_000)).astype(np.float32)
    conv = FrameConverter()
    out = np.concatenate([conv.convert(_frame(tone.reshape(1, -1), "flt", "mono", 16_000))
                          for _ in range(3)])
    assert conv.resampled_frames == 3
    assert abs(out.shape[0] - 3 * 4800) <= 64  # the resampler keeps a few samples back
    assert 0.3 < np.abs(out[1000:]).max() < 0.6
