"""The streaming resampler: exact declared delay, accuracy, chunking invariance, chaining."""

from __future__ import annotations

import numpy as np
import pytest

from denoiser.resample import Resampler, resample

RATES = [(16_000, 48_000), (48_000, 16_000), (44_100, 48_000), (48_000, 44_100),
         (8_000, 48_000), (22_050, 48_000)]


def tone(rate: int, freq: float, seconds: float, phase: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t + phase).astype(np.float32)


@pytest.mark.parametrize(("fin", "fout"), RATES)
def test_declared_delay_is_exact_on_a_tone(fin: int, fout: int) -> None:
    freq = 1234.5
    x = tone(fin, freq, 0.5)
    rs = Resampler(fin, fout)
    y = rs.process(x)
    # Output m estimates the input at time (m - delay) / fout.
    m = np.arange(y.size)
    expected = np.sin(2 * np.pi * freq * (m - rs.delay) / fout + 0.3)
    core = slice(rs.delay + 200, y.size - 200)
    assert np.abs(y[core] - expected[core]).max() < 2e-3


@pytest.mark.parametrize(("fin", "fout"), RATES)
def test_chunking_does_not_change_output(fin: int, fout: int) -> None:
    x = np.random.default_rng(0).standard_normal(fin // 5).astype(np.float32)
    whole = Resampler(fin, fout).process(x)
    rs = Resampler(fin, fout)
    cuts = np.cumsum(np.random.default_rng(1).integers(0, 700, size=200))
    parts = [rs.process(c) for c in np.split(x, cuts[cuts < x.size])]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


@pytest.mark.parametrize("fin", [16_000, 44_100, 48_000, 8_000])
def test_chained_delay_is_whole_and_round_trip_aligns(fin: int) -> None:
    latency = 960  # e.g. a model's latency at 48 kHz between the two stages
    x = tone(fin, 440.0, 0.4)
    up = Resampler(fin, 48_000)
    down = Resampler(48_000, fin, input_delay=up.delay + latency)
    mid = np.concatenate([np.zeros(latency, np.float32), up.process(x)])
    y = down.process(mid)
    assert isinstance(down.delay, int)
    m = np.arange(y.size)
    expected = np.sin(2 * np.pi * 440.0 * (m - down.delay) / fin + 0.3)
    core = slice(down.delay + 300, y.size - 300)
    assert np.abs(y[core] - expected[core]).max() < 3e-3


def test_whole_signal_helper_keeps_duration_and_alignment() -> None:
    x = np.zeros(44_100 // 4, np.float32)
    x[5000] = 1.0
    y = resample(x, 44_100, 48_000)
    assert y.size == round(x.size * 48_000 / 44_100)
    assert abs(int(np.argmax(y)) - 5000 * 48_000 / 44_100) <= 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 48_000)
    with pytest.raises(ValueError, match="mono"):
        Resampler(16_000, 48_000).process(np.zeros((2, 10), np.float32))
    assert Resampler(48_000, 48_000, input_delay=7).delay == 7
