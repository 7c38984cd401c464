"""The audio the tests ship (tests/data/, sources and licences in its README): real speech and
real noise at 48 kHz, so the suite needs no training corpus."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import soundfile

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SPEECH_FILE = DATA_DIR / "vctk_p286_011.flac"  # 48 kHz, 6.77 s, with a pause
NOISE_FILE = DATA_DIR / "doing_the_dishes_4s.flac"  # 16 kHz kitchen recording, 4 s


def read_48k(path: Path) -> np.ndarray:
    """A shipped file as float32 mono at 48 kHz (16 kHz ones upsampled x3, polyphase)."""
    from scipy.signal import resample_poly

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate == 48_000:
        return mono
    if 48_000 % rate:
        raise ValueError(f"{path}: {rate} Hz does not divide 48 kHz")
    return resample_poly(mono, 48_000 // rate, 1).astype(np.float32)


@cache
def _speech() -> np.ndarray:
    return read_48k(SPEECH_FILE)


@cache
def _noise() -> np.ndarray:
    return read_48k(NOISE_FILE)


def speech_48k() -> np.ndarray:
    """Clean read speech (VCTK p286_011), 48 kHz float32 (a fresh copy)."""
    return _speech().copy()


def noise_48k() -> np.ndarray:
    """A real kitchen recording (Speech Commands `doing_the_dishes`), 48 kHz float32, 4 s."""
    return _noise().copy()


def noisy_example(seconds: float = 3.0, snr_db: float = 5.0) -> np.ndarray:
    """`seconds` of the speech plus the kitchen noise at `snr_db`, 48 kHz float32, a whole
    number of 10 ms hops (the noise loops if it is shorter)."""
    n = int(seconds * 48_000) // 480 * 480
    speech = _speech()[:n]
    if speech.size < n:
        raise ValueError(f"only {_speech().size / 48_000:.2f} s of speech are shipped")
    noise = np.resize(_noise(), n)
    gain = np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (speech + gain * noise).astype(np.float32)
