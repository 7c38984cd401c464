"""Launch Debian's Chromium headless through Playwright (no browser download), with a fake
microphone that plays a WAV file, and make that WAV: real speech in real noise."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from denoiser.paths import SHARED_DATA_DIR

CHROMIUM = "/usr/bin/chromium"
SPEECH = SHARED_DATA_DIR / "clean" / "vctk_p286" / "p286_011.wav"  # 48 kHz
NOISE = (SHARED_DATA_DIR / "noise" / "soundbible_ambience"
         / "Restaurant_Ambiance-SoundBible.com-628640170.wav")


def chromium_path() -> str:
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        pytest.skip("Debian's chromium is not installed (scripts/install-system-deps.sh)")
    return path


def noisy_speech_wav(directory: Path, snr_db: float = 5.0) -> tuple[Path, np.ndarray]:
    """Write 48 kHz mono s16 speech + restaurant noise at `snr_db`; return it and the clean."""
    if not SPEECH.is_file() or not NOISE.is_file():
        pytest.skip("shared speech/noise data missing")
    clean, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == 48_000
    noise, noise_rate = soundfile.read(NOISE, dtype="float32")
    # 16 kHz noise to 48 kHz by linear interpolation (enough for a background bed).
    positions = np.arange(clean.size) * noise_rate / rate
    noise = np.interp(positions % (noise.size - 1), np.arange(noise.size), noise)
    gain = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    mix = clean + gain * noise
    mix *= 0.5 / np.max(np.abs(mix))
    path = directory / "noisy_speech.wav"
    soundfile.write(path, mix, rate, subtype="PCM_16")
    return path, clean * (0.5 / np.max(np.abs(mix)))


def launch_args(audio_file: Path, origin: str) -> list[str]:
    # getUserMedia needs a secure context: the test server is plain http on the interface IP.
    return [f"--unsafely-treat-insecure-origin-as-secure={origin}", "--no-sandbox",
            "--disable-gpu", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={audio_file}",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run"]


async def launch(playwright: Any, audio_file: Path, origin: str) -> Any:
    return await playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                            args=launch_args(audio_file, origin))


def envelope(x: np.ndarray, block: int = 960) -> np.ndarray:
    """Log energy of 20 ms blocks."""
    blocks = x[: x.size // block * block].reshape(-1, block)
    return np.log10(np.mean(blocks**2, axis=1) + 1e-8)


def best_envelope_correlation(received: np.ndarray, reference: np.ndarray) -> float:
    """Max over lags of the correlation between the received envelope and the (looping)
    reference envelope: near 1 when the received audio is that speech, near 0 otherwise."""
    got = envelope(received)
    ref = envelope(reference)
    looped = np.concatenate([ref, ref, ref])
    best = -1.0
    for lag in range(ref.size):
        window = looped[lag: lag + got.size]
        if window.size < got.size:
            break
        if np.std(window) == 0 or np.std(got) == 0:
            continue
        best = max(best, float(np.corrcoef(window, got)[0, 1]))
    return best
