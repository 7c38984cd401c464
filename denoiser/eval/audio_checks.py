"""One check for audio handed to the evaluation code: mono, float, finite."""

from __future__ import annotations

import numpy as np


def problem_with_mono_float(audio: np.ndarray) -> str | None:
    """Why `audio` is not mono 1-D float audio with finite samples, or None when it is."""
    if audio.ndim != 1:
        return f"expected mono 1-D audio, got shape {audio.shape}"
    if not np.issubdtype(audio.dtype, np.floating):
        return f"expected float audio in [-1, 1], got dtype {audio.dtype}"
    if not np.all(np.isfinite(audio)):
        return "audio contains NaN or infinite samples"
    return None
