"""The learned music decision on real recordings: hold music, noisy speech, and mixtures.

Every clip's decision timeline is checked hop by hop: how soon music is bypassed, that it stays
bypassed (no flicker), that noisy speech is (almost) never bypassed, and that an announcement
over hold music keeps the bypass (the documented choice, docs/bypass.md).

The shipped classifier has seen all seven music recordings (too few to hold any out of it; the
held-out accuracy is in models/bypass_classifier.json), but no speech or noise file used here:
`is_val` picks the validation speakers and noises it never saw.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from denoiser.bypass import BypassDetector
from denoiser.bypass.analysis import resample
from denoiser.bypass.classifier import DEFAULT_PATH
from denoiser.paths import SHARED_DATA_DIR
from denoiser.training.bypass_classifier import is_val

SR, HOP = 48_000, 480
MUSIC = sorted((SHARED_DATA_DIR / "music").rglob("*.wav"))

pytestmark = pytest.mark.corpus


@cache
def load(path: Path, seconds: float | None = None, start: float = 0.0) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(1)[int(start * sr) :]
    if seconds is not None:
        x = x[: int(seconds * sr)]
    return resample(x, sr, SR)


def at_rms(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * 10 ** (dbfs / 20)).astype(np.float32)


def timeline(x: np.ndarray) -> list[str | None]:
    det = BypassDetector()
    return [det.update(x[i : i + HOP]) for i in range(0, len(x) - HOP + 1, HOP)]


def bypassed(tl: list[str | None]) -> np.ndarray:
    return np.array([r is not None for r in tl])


def flips(b: np.ndarray) -> int:
    return int(np.count_nonzero(b[1:] != b[:-1]))


def held_out_speech_and_noise() -> tuple[list[Path], list[Path]]:
    """Validation speakers and noise files (never seen in training)."""
    speech = [p for p in sorted((SHARED_DATA_DIR / "clean").rglob("*.wav")) if is_val(p)]
    noise = [p for p in sorted((SHARED_DATA_DIR / "noise").rglob("*.wav"))
             if is_val(p) and sf.info(p).duration >= 3.0]
    return speech, noise


def test_classifier_is_shipped() -> None:
    assert DEFAULT_PATH.is_file()
    assert DEFAULT_PATH.stat().st_size < 100_000
    assert DEFAULT_PATH.with_suffix(".json").is_file()  # settings and validation report


@pytest.mark.parametrize("path", MUSIC, ids=lambda p: p.stem)
def test_real_music_is_bypassed_quickly_and_stays(path: Path) -> None:
    x = at_rms(load(path, 12.0, start=5.0 if sf.info(path).duration > 20 else 0.0), -24.0)
    b = bypassed(timeline(x))
    start = BypassDetector().start_hops
    moh = path.parent.name == "asterisk_moh"
    if moh:
        # the stream opens on the music: its first hops are kept by the start hold
        assert start >= 10 and b[:start].all()
        # hold music: the classifier takes over from the start hold, at most after a short gap
        # (measured: 1-7 hops; the stream's 3-hop look-ahead covers most of it)
        assert b.mean() >= 0.95 and flips(b) <= 2, f"{(~b).sum()} hops denoised"
    else:
        # the solo guitar recordings (sparse plucked notes, a quiet intro) are harder: the
        # classifier's onset within 2 s after the start hold, and 80 % kept after it
        rest = b[start:]
        onset = int(np.argmax(rest)) if rest.any() else len(rest)
        assert onset <= 200, f"music bypassed only after {start + onset} hops"
        kept = rest[onset:].mean()
        assert kept >= 0.80, f"{(~rest[onset:]).sum()} hops denoised after onset"
        assert flips(b) <= 5
    print(f"{path.stem}: bypassed {b.mean():.3f}, {flips(b)} switches")


def test_noisy_speech_is_not_bypassed() -> None:
    speech, noise = held_out_speech_and_noise()
    rng = np.random.default_rng(0)
    total = wrong = 0
    worst = 0.0
    starts: list[int] = []
    for i in range(16):
        s = np.concatenate([load(speech[int(j)]) for j in rng.choice(len(speech), 3)])[: 6 * SR]
        n = load(noise[i % len(noise)])
        n = np.tile(n, len(s) // len(n) + 1)[: len(s)]
        snr = (0.0, 5.0, 10.0, 20.0)[i % 4]
        x = at_rms(s, -26.0) + at_rms(n, -26.0 - snr)
        b = bypassed(timeline(x))
        starts.append(int(np.argmin(b)))  # hops bypassed at the stream's opening
        total += len(b)
        wrong += int(b.sum())
        worst = max(worst, float(b.mean()))
    print(f"noisy speech: {wrong}/{total} hops bypassed, worst clip {worst:.3f}")
    # every clip opens a stream: the start hold ends at the latest after start_hops (one clip
    # that opens on the drone n99 is then taken for music for a while, see docs/bypass.md)
    assert sorted(starts)[len(starts) // 2] <= BypassDetector().start_hops
    # the bar is over all noisy speech; one dev noise (hu n99, a music-like sound that
    # starts the clip alone) is bypassed for half its clip: see docs/bypass.md
    assert wrong <= 0.05 * total


def test_speech_music_speech_timeline() -> None:
    speech, noise = held_out_speech_and_noise()
    speech = [p for p in speech if "librispeech" in str(p)]  # running speech, not spelt letters
    s1 = at_rms(np.concatenate([load(p) for p in speech[:2]])[: 4 * SR], -26.0)
    s2 = at_rms(np.concatenate([load(p) for p in speech[2:4]])[: 4 * SR], -26.0)
    n = load(noise[0])
    n = at_rms(np.tile(n, 9 * SR // len(n) + 1), -36.0)
    music = at_rms(load(MUSIC[0], 6.0, start=20.0), -24.0)
    x = np.concatenate([s1 + n[: len(s1)], music, s2 + n[len(s1) : len(s1) + len(s2)]])
    b = bypassed(timeline(x))
    a, m = len(s1) // HOP, len(music) // HOP
    assert b[:a].mean() <= 0.05
    music_part = b[a : a + m]
    onset = int(np.argmax(music_part))
    assert music_part.any() and onset <= 150  # the 1 s context still holds speech
    assert music_part[onset:].all()
    after = b[a + m :]
    release = int(np.argmin(after))
    # the 1 s context still holds music, then 0.5 s of hysteresis
    assert release <= 200 and not after[release:].any(), f"released after {release} hops"


def test_announcement_over_music_keeps_bypass() -> None:
    speech, _ = held_out_speech_and_noise()
    music = at_rms(load(MUSIC[0], 12.0, start=10.0), -24.0)
    words = at_rms(np.concatenate([load(p) for p in speech[:3]])[: 5 * SR], -24.0)  # 0 dB
    x = music.copy()
    x[3 * SR : 3 * SR + len(words)] += words
    b = bypassed(timeline(x))
    onset = int(np.argmax(b))
    assert onset <= 80
    # (at most a short gap between the start hold and the classifier's music)
    assert b[onset:].mean() >= 0.97 and flips(b) <= 2


def test_a_stream_that_opens_on_a_drone_is_not_taken_for_music() -> None:
    # hu n99 (a dev noise, unseen): a 250 Hz harmonic buzz that never changes, which the
    # classifier calls music. The stream opens on it; speech at 0 dB joins after 130 ms.
    speech, noise = held_out_speech_and_noise()
    drone = load(next(p for p in noise if p.stem == "n99"))
    words = at_rms(np.concatenate([load(p) for p in speech[:3]])[: 5 * SR], -26.0)
    x = np.tile(at_rms(drone, -26.0), 6 * SR // len(drone) + 1)[: 6 * SR]
    x[13 * HOP : 13 * HOP + len(words)] += words
    b = bypassed(timeline(x))
    # found within 100 ms: the start hold ends there and no music bypass starts (it was a
    # quarter of the clip before; the 80 ms checks cannot see the drone under the speech)
    assert int(np.argmin(b)) <= 10
    assert b.mean() <= 0.02, f"{b.sum()} hops bypassed"
