"""Signal generators for telephony tones: DTMF (ITU-T Q.23), call-progress tones, pure tones.

Used by the tests and the evaluation (offline); all return float32 mono at the requested rate.
Levels are given as the RMS of each frequency component in dBFS (a full-scale sine is -3 dBFS
RMS). The tables themselves live with the detectors, in `denoiser.bypass.tone_tables`.
"""

from __future__ import annotations

import numpy as np

from denoiser.bypass.tone_tables import (
    CALL_PROGRESS_TONES,
    DTMF_COLS,
    DTMF_KEYS,
    DTMF_ROWS,
    CallProgressTone,
    dtmf_freqs,
)

__all__ = ["CALL_PROGRESS_TONES", "DTMF_COLS", "DTMF_KEYS", "DTMF_ROWS", "CallProgressTone",
           "call_progress", "dtmf_freqs", "dtmf_sequence", "tone", "white_noise"]


def _db(level_dbfs: float) -> float:
    """Peak amplitude of a sine whose RMS is `level_dbfs`."""
    return float(np.sqrt(2.0) * 10.0 ** (level_dbfs / 20.0))


def tone(freqs: tuple[float, ...] | list[float], duration: float, sr: int = 48_000,
         level_dbfs: float | tuple[float, ...] = -20.0, phase: float = 0.0) -> np.ndarray:
    """Sum of sines, each at `level_dbfs` RMS (or one level per frequency)."""
    n = round(duration * sr)
    t = np.arange(n) / sr
    levels = level_dbfs if isinstance(level_dbfs, tuple) else (level_dbfs,) * len(freqs)
    out = np.zeros(n)
    for f, lv in zip(freqs, levels, strict=True):
        out += _db(lv) * np.sin(2 * np.pi * f * t + phase)
    return out.astype(np.float32)


def dtmf_sequence(digits: str, sr: int = 48_000, on: float = 0.07, off: float = 0.06,
                  level_dbfs: float = -20.0, twist_db: float = 0.0, lead: float = 0.2,
                  tail: float = 0.2) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A DTMF digit string; returns (audio, [(start, end) sample of each digit]).

    `twist_db` is high group minus low group level; the low group sits at `level_dbfs`.
    """
    parts = [np.zeros(round(lead * sr), np.float32)]
    spans: list[tuple[int, int]] = []
    pos = len(parts[0])
    for i, d in enumerate(digits):
        lo, hi = dtmf_freqs(d)
        seg = tone((lo, hi), on, sr, (level_dbfs, level_dbfs + twist_db))
        spans.append((pos, pos + len(seg)))
        parts.append(seg)
        pos += len(seg)
        gap = np.zeros(round((off if i < len(digits) - 1 else tail) * sr), np.float32)
        parts.append(gap)
        pos += len(gap)
    return np.concatenate(parts), spans


def call_progress(name: str, duration: float, sr: int = 48_000,
                  level_dbfs: float = -20.0) -> tuple[np.ndarray, np.ndarray]:
    """A call-progress tone with its cadence; returns (audio, per-sample bool 'tone on')."""
    spec = CALL_PROGRESS_TONES[name]
    audio = tone(spec.freqs, duration, sr, level_dbfs)
    n = len(audio)
    on = np.ones(n, bool)
    if spec.cadence:
        t = np.arange(n) / sr
        period = sum(spec.cadence)
        phase = np.mod(t, period)
        on[:] = False
        start = 0.0
        for i, length in enumerate(spec.cadence):
            if i % 2 == 0:
                on |= (phase >= start) & (phase < start + length)
            start += length
    return (audio * on).astype(np.float32), on


def white_noise(duration: float, sr: int = 48_000, level_dbfs: float = -40.0,
                seed: int = 0) -> np.ndarray:
    """Gaussian white noise at `level_dbfs` RMS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(duration * sr)) * 10 ** (level_dbfs / 20)).astype(np.float32)
