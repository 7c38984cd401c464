"""Cold starts in mode `auto`: a stream that opens on music (a hold queue picking up) is kept
untouched from its first hop and never fades in denoised; a stream that opens on noisy speech
leaves the start hold quickly. Synthesised music and the shipped speech/noise (tests/data): no
corpus needed."""

from __future__ import annotations

import numpy as np

from denoiser.bypass import BypassDetector
from support.sample_audio import noisy_example

SR, HOP = 48_000, 480


def keyboard_music(seconds: float, seed: int = 0) -> np.ndarray:
    """A chord progression (four chords, a beat of 0.5 s) of decaying harmonic notes, a melody
    note on every beat and a kick drum: the shape of a simple hold-music loop."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SR), np.float32)
    chords = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16))
    n = SR // 2
    tt = np.arange(n) / SR
    for k in range(int(seconds * 2) + 1):
        seg = np.zeros(n)
        for semi in chords[(k // 4) % 4]:
            f = 220 * 2 ** (semi / 12)
            partials = sum(0.6**h * np.sin(2 * np.pi * f * h * tt) for h in range(1, 8))
            seg += partials * np.exp(-3 * tt)
        mel = 440 * 2 ** (int(rng.choice((0, 2, 4, 5, 7, 9, 11, 12))) / 12)
        partials = sum(0.8 * 0.5**h * np.sin(2 * np.pi * mel * h * tt) for h in range(1, 6))
        seg += partials * np.exp(-2 * tt)
        seg += 2 * np.sin(2 * np.pi * 60 * tt * np.exp(-20 * tt)) * np.exp(-25 * tt)
        i = k * n
        out[i : i + n] += seg[: max(0, len(out) - i)].astype(np.float32)
    return (out / np.sqrt(np.mean(out**2)) * 10 ** (-24 / 20)).astype(np.float32)


def bypassed(x: np.ndarray) -> np.ndarray:
    det = BypassDetector()
    return np.array([det.update(x[i : i + HOP]) is not None
                     for i in range(0, len(x) - HOP + 1, HOP)])


def test_music_at_the_opening_is_never_denoised() -> None:
    for seed in (0, 1):
        b = bypassed(keyboard_music(6.0, seed))
        assert b[0], "the first hop must pass untouched"
        assert b[:200].all(), f"denoised hops in the first 2 s: {np.flatnonzero(~b[:200])[:10]}"
        assert b.mean() >= 0.98


def test_noisy_speech_at_the_opening_leaves_the_start_hold() -> None:
    for snr in (0.0, 5.0, 10.0):
        b = bypassed(noisy_example(6.0, snr))
        start = BypassDetector().start_hops
        release = int(np.argmin(b))
        assert release <= start + 1, f"{snr} dB: the start hold lasted {release} hops"
        assert b.mean() <= 0.05, f"{snr} dB: {b.sum()} hops bypassed"
