"""Side-by-side log spectrograms (one row per clip, one column per system) saved as a PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.signal import stft


def log_spectrogram(audio: np.ndarray, sample_rate: int,
                    n_fft: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequencies Hz, times s, magnitude in dB re full scale) of a Hann-windowed STFT."""
    freqs, times, spec = stft(np.asarray(audio, dtype=np.float64), fs=sample_rate,
                              window="hann", nperseg=n_fft, noverlap=n_fft * 3 // 4)
    return freqs, times, 20.0 * np.log10(np.abs(spec) + 1e-7)


def save_spectrogram_grid(rows: Sequence[tuple[str, Mapping[str, np.ndarray]]],
                          path: Path, sample_rate: int, floor_db: float = -100.0) -> Path:
    """Plot `rows` of (title, {system: audio}) on a shared dB scale into `path` (PNG)."""
    if not rows:
        raise ValueError("no clips to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0][1])
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False, sharey=True,
                             figsize=(3.2 * len(columns) + 1.0, 2.4 * len(rows)),
                             layout="constrained")
    image = None
    for r, (title, systems) in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            freqs, times, db = log_spectrogram(systems[name], sample_rate)
            image = ax.pcolormesh(times, freqs / 1000.0, db, vmin=floor_db, vmax=0.0,
                                  shading="auto", cmap="magma", rasterized=True)
            ax.set_title(f"{title}: {name}" if c == 0 else name, fontsize=8)
            if c == 0:
                ax.set_ylabel("kHz")
            if r == len(rows) - 1:
                ax.set_xlabel("s")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="dBFS")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
