"""The crossfade that smooths every switch between the denoised and the original path."""

from __future__ import annotations

import math

import numpy as np

CROSSFADES = ("linear", "equal_power")


def crossfade_curves(length: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of `length` samples. Linear keeps correlated signals (speech in both
    paths) at constant level; equal power keeps uncorrelated ones (the noise) at constant power."""
    if kind not in CROSSFADES:
        raise ValueError(f"crossfade must be one of {CROSSFADES}, got {kind!r}")
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    if kind == "linear":
        fade_in = t
        fade_out = 1.0 - t
    else:
        fade_in = np.sin(t * math.pi / 2)
        fade_out = np.cos(t * math.pi / 2)
    return fade_out.astype(np.float32), fade_in.astype(np.float32)
