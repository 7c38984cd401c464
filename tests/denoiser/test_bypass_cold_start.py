"""Cold starts in mode `auto`: a stream that opens on music (a hold queue picking up) is kept
untouched from its first hop and never fades in denoised; a stream that opens on noisy speech
leaves the start hold quickly. Synthesised music and the shipped speech/noise (tests/data): no
corpus needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import soundfile as sf

from denoiser.bypass import BypassDetector
from denoiser.bypass.analysis import resample
from support.sample_audio import NOISE_FILE, noisy_example

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


def bypassed(x: np.ndarray, **detector: Any) -> np.ndarray:
    det = BypassDetector(**detector)
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


def over_dishes(x: np.ndarray, snr_db: float) -> np.ndarray:
    noise, sr = sf.read(NOISE_FILE, dtype="float32", always_2d=True)
    noise = np.resize(resample(noise.mean(1), sr, SR), len(x))
    gain = np.sqrt(np.mean(x**2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return (x + gain * noise).astype(np.float32)


def timeline(x: np.ndarray, **detector: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hop: bypassed, still in the start hold, and the classifier's P(music) + P(speech
    over music) on the latest frame."""
    det = BypassDetector(**detector)
    rows = [(det.update(x[i : i + HOP]) is not None, det._starting, det.p_hold)
            for i in range(0, len(x) - HOP + 1, HOP)]
    b, starting, p_hold = (np.array(c) for c in zip(*rows, strict=True))
    return b, starting, p_hold


def test_music_still_undecided_when_the_start_hold_ends_stays_held() -> None:
    """Hold music over a noise bed (0 dB) is not yet confirmed when the 100 ms hold runs out: the
    hold goes on while the classifier leans to music, so no hop of it fades in denoised."""
    det = BypassDetector()
    start, longest, lean = det.start_hops, det.start_extend_hops, det.start_extend_min
    # with `start_extend_misses` = k, k - 1 frames (2 hops each) in a row under the lean pass
    back = 2 * (det.start_extend_misses - 1)
    for seed in (0, 2):
        x = over_dishes(keyboard_music(4.0, seed), 0.0)
        cut = bypassed(x, start_extend_ms=0.0)  # the hold alone: 100 ms, then denoise
        assert not cut[start : start + 10].all(), "the case must leave the 100 ms hold undecided"
        b, starting, p_hold = timeline(x)
        assert b.all(), f"denoised hops: {np.flatnonzero(~b)[:10]}"
        extended = np.flatnonzero(starting[start:]) + start
        assert len(extended), "the hold must go on past 100 ms here"
        assert extended.max() < longest, "the hold never outlasts start_extend_ms"
        leaned = [p_hold[max(0, i - back) : i + 1].max() >= lean for i in extended]
        assert all(leaned), "it goes on only while the recent frames lean to music"


def test_noisy_speech_does_not_extend_the_start_hold() -> None:
    for snr in (0.0, 5.0, 10.0):
        _, starting, _ = timeline(noisy_example(6.0, snr))
        assert not starting[BypassDetector().start_hops + 1 :].any(), f"{snr} dB"
