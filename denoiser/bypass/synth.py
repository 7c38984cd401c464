"""Signal generators for telephony tones: DTMF (ITU-T Q.23), call-progress tones, pure tones.

Used by the tests and the evaluation; all return float32 mono at the requested rate. Levels are
given as the RMS of each frequency component in dBFS (a full-scale sine is -3 dBFS RMS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTMF_ROWS: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS: tuple[str, ...] = ("123A", "456B", "789C", "*0#D")


def dtmf_freqs(digit: str) -> tuple[float, float]:
    """(low, high) frequencies of a DTMF key (Q.23)."""
    for r, row in enumerate(DTMF_KEYS):
        c = row.find(digit.upper())
        if c >= 0:
            return DTMF_ROWS[r], DTMF_COLS[c]
    raise ValueError(f"not a DTMF key: {digit!r}")


@dataclass(frozen=True)
class CallProgressTone:
    """A call-progress tone: its frequencies and cadence (on, off, on, off, ... in seconds)."""

    name: str
    freqs: tuple[float, ...]
    cadence: tuple[float, ...]  # empty: continuous


CALL_PROGRESS_TONES: dict[str, CallProgressTone] = {
    t.name: t
    for t in (
        CallProgressTone("na_dial", (350.0, 440.0), ()),
        CallProgressTone("na_ringback", (440.0, 480.0), (2.0, 4.0)),
        CallProgressTone("na_busy", (480.0, 620.0), (0.5, 0.5)),
        CallProgressTone("na_reorder", (480.0, 620.0), (0.25, 0.25)),
        CallProgressTone("eu_dial", (425.0,), ()),
        CallProgressTone("eu_ringback", (425.0,), (1.0, 4.0)),
        CallProgressTone("eu_busy", (425.0,), (0.5, 0.5)),
        CallProgressTone("uk_dial", (350.0, 450.0), ()),
        CallProgressTone("uk_ringback", (400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
        CallProgressTone("uk_busy", (400.0,), (0.375, 0.375)),
    )
}


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
