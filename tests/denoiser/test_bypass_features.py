"""The music cues of `ContextFeatures` on synthesised signals whose answer is known: notes on a
semitone grid (any tuning) against a gliding voice-like pitch, a steady beat against random
onsets, syllable-rate modulation against slow modulation, partials that ring through the
context against a voice's in noise. No corpus needed."""

from __future__ import annotations

import numpy as np

from denoiser.bypass.detector import BypassDetector
from denoiser.bypass.features import N_FEATURES

RATE, HOP = 16_000, 160
GRID_L, SYL, RHYTHM, FLOOR = N_FEATURES - 5, N_FEATURES - 3, N_FEATURES - 2, N_FEATURES - 1


def vectors(x: np.ndarray) -> np.ndarray:
    det = BypassDetector(RATE, HOP, use_music=False)
    rows = []
    for i in range(0, len(x) - HOP + 1, HOP):
        det.update(x[i : i + HOP])
        if det.analysed:
            rows.append(det._features.vector())
    out = np.stack(rows)
    assert out.shape[1] == N_FEATURES and np.isfinite(out).all()
    return out


def harmonic(f0: np.ndarray, n_harm: int = 6) -> np.ndarray:
    """A harmonic tone following the per-sample pitch contour f0 (1/k amplitudes)."""
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    return sum(np.sin(k * phase) / k for k in range(1, n_harm + 1)).astype(np.float32)


def notes(rng: np.random.Generator, seconds: float, cents: float) -> np.ndarray:
    """A melody of 150-400 ms notes on the semitone grid, detuned by `cents`."""
    f0 = []
    while len(f0) < seconds * RATE:
        semis = int(rng.integers(-9, 10))
        f = 220 * 2 ** ((semis + cents / 100) / 12)
        f0 += [f] * int(rng.uniform(0.15, 0.4) * RATE)
    return harmonic(np.array(f0[: int(seconds * RATE)]))


def glide(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A voice-like pitch: a smooth random walk of 120-300 Hz."""
    n = int(seconds * RATE)
    knots = rng.uniform(np.log(120), np.log(300), int(seconds * 8) + 2)
    f0 = np.exp(np.interp(np.arange(n), np.linspace(0, n, len(knots)), knots))
    return harmonic(f0)


def test_notes_on_a_semitone_grid_are_coherent_a_gliding_pitch_is_not() -> None:
    rng = np.random.default_rng(0)
    for cents in (0.0, 30.0, -45.0):  # any tuning, or a speed change
        g = vectors(0.05 * notes(rng, 4.0, cents))[30:, GRID_L]
        assert np.median(g) > 0.6, (cents, np.median(g))
    g = vectors(0.05 * glide(rng, 4.0))[30:, GRID_L]
    assert np.median(g) < 0.35, np.median(g)


def _clicks(times: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    x = 0.002 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)
    burst = (rng.standard_normal(400) * np.exp(-np.arange(400) / 60)).astype(np.float32)
    for t in times:
        i = int(t * RATE)
        x[i : i + 400] += 0.3 * burst[: len(x) - i]
    return x


def test_a_steady_beat_has_rhythm_random_onsets_do_not() -> None:
    rng = np.random.default_rng(1)
    beat = vectors(_clicks(np.arange(0.1, 5.9, 0.5), 6.0, rng))[45:, RHYTHM]
    rand = vectors(_clicks(np.sort(rng.uniform(0.1, 5.9, 12)), 6.0, rng))[45:, RHYTHM]
    assert np.median(beat) > 0.6 and np.median(rand) < np.median(beat) - 0.25, (
        np.median(beat), np.median(rand))


def test_syllable_rate_modulation_is_seen() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(5 * RATE) / RATE
    noise = rng.standard_normal(len(t)).astype(np.float32) * 0.05
    fast = vectors(noise * (1.05 + np.sin(2 * np.pi * 4.0 * t)))[30:, SYL]
    slow = vectors(noise * (1.05 + np.sin(2 * np.pi * 1.0 * t)))[30:, SYL]
    assert np.median(fast) > 0.6 and np.median(slow) < 0.3, (np.median(fast), np.median(slow))


def test_partials_that_ring_through_the_context_raise_the_floor_tonality() -> None:
    """A chord held for a second and more (over noise) keeps sharp peaks in the spectral floor;
    a gliding voice-like pitch with syllable pauses over the same noise leaves the noise's
    smooth floor."""
    rng = np.random.default_rng(3)
    n = 4 * RATE
    t = np.arange(n) / RATE
    noise = 0.01 * rng.standard_normal(n).astype(np.float32)
    chords = np.zeros(n, np.float32)
    for k, root in enumerate((220.0, 196.0)):  # two chords of 2 s each
        part = slice(k * n // 2, (k + 1) * n // 2)
        for ratio in (1.0, 1.26, 1.5):
            chords[part] += harmonic(np.full(n // 2, root * ratio), 4) / 3
    pauses = (np.sin(2 * np.pi * 4.0 * t) > -0.3).astype(np.float32)  # syllables and gaps
    voice = glide(rng, 4.0) * pauses
    held = vectors(0.05 * chords + noise)[30:, FLOOR] * 10
    spoken = vectors(0.05 * voice + noise)[30:, FLOOR] * 10
    assert np.median(held) > 15.0 and np.median(spoken) < 12.0, (
        np.median(held), np.median(spoken))
