"""Signal augmentations for training mixes (numpy, float32, 48 kHz mono).

Every function takes a `numpy.random.Generator` where it draws anything, so a mix is fully
reproducible from the generator's state (the training loop checkpoints it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import signal

from denoiser.training import libopus

SAMPLE_RATE = 48_000
OPUS_FRAME = 960  # 20 ms, what browsers send
OPUS_BITRATES = (12_000, 16_000, 24_000, 32_000, 48_000, 64_000)


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def apply_gain_db(x: np.ndarray, db: float) -> np.ndarray:
    return (x * db_to_gain(db)).astype(np.float32)


# ---------------------------------------------------------------- filtering / EQ


def _peaking_biquad(f0: float, q: float, gain_db: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ audio-EQ-cookbook peaking filter."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / sr
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return b / den[0], den / den[0]


def random_eq(x: np.ndarray, rng: np.random.Generator, bands: int = 3,
              max_db: float = 12.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Colour `x` like a random microphone/room: a few peaking filters (±max_db) plus,
    half the time, a random high-pass (50..300 Hz) as cheap headsets do."""
    y = x.astype(np.float64)
    for _ in range(int(rng.integers(1, bands + 1))):
        f0 = float(np.exp(rng.uniform(np.log(80.0), np.log(min(16_000.0, sr * 0.45)))))
        b, a = _peaking_biquad(f0, float(rng.uniform(0.5, 2.0)),
                               float(rng.uniform(-max_db, max_db)), sr)
        y = signal.lfilter(b, a, y)
    if rng.random() < 0.5:
        sos = signal.butter(2, float(rng.uniform(50.0, 300.0)), "highpass", fs=sr, output="sos")
        y = signal.sosfilt(sos, y)
    return y.astype(np.float32)


def lowpass(x: np.ndarray, cutoff_hz: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Steep zero-phase low-pass: band-limits noise to match band-limited speech."""
    sos = signal.butter(10, cutoff_hz, "lowpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, x.astype(np.float64)).astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (16 kHz -> 48 kHz is an exact 3x)."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    g = np.gcd(sr_in, sr_out)
    return signal.resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def coloured_noise(n: int, rng: np.random.Generator, exponent: float | None = None) -> np.ndarray:
    """Fullband synthetic noise with a 1/f^exponent power spectrum (0 white, 1 pink, 2 brown).

    The real noise recordings are mostly 16 kHz; this is what puts noise above 8 kHz."""
    beta = float(rng.uniform(0.0, 2.0)) if exponent is None else exponent
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spec *= f ** (-beta / 2)
    y = np.fft.irfft(spec, n)
    return (y / (np.std(y) + 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- reverberation


def synthetic_rir(rng: np.random.Generator, rt60: float | None = None,
                  sr: int = SAMPLE_RATE) -> np.ndarray:
    """Exponentially decaying Gaussian noise after a direct-path impulse at index 0."""
    t60 = float(rng.uniform(0.15, 1.0)) if rt60 is None else rt60
    n = int(t60 * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / t60)  # -60 dB at t60
    # A few ms pre-delay between the direct sound and the first reflections.
    tail[: int(rng.uniform(0.001, 0.01) * sr)] = 0.0
    # Reverberant energy relative to the direct path's: a direct-to-reverberant ratio of
    # -3..+12 dB (near to far talkers).
    tail *= db_to_gain(-float(rng.uniform(-3.0, 12.0))) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail**2))).astype(np.float32)


def align_rir(rir: np.ndarray) -> np.ndarray:
    """Drop what precedes the direct path (the peak), so convolving adds no delay."""
    return rir[int(np.argmax(np.abs(rir))):].astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray, early_ms: float = 50.0,
                sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant, early) versions of `x`, both the length of `x` and aligned with it.

    The early part (direct path + the first `early_ms` of reflections) is the training target:
    the model removes late reverberation but does not have to undo the room's colouration.
    """
    rir = align_rir(rir)
    early = rir.copy()
    early[int(early_ms * sr / 1000):] = 0.0
    n = len(x)
    wet = signal.fftconvolve(x, rir)[:n]
    dry = signal.fftconvolve(x, early)[:n]
    # Keep the direct path at the level of the dry input.
    scale = 1.0 / (float(rir[0]) or 1.0)  # signed: a negative direct path keeps polarity
    return (wet * scale).astype(np.float32), (dry * scale).astype(np.float32)


# ---------------------------------------------------------------- Opus and packet loss


@cache
def opus_preskip(application: str = "voip") -> int:
    """Samples libopus's encoder delays its output by (the OpusHead pre-skip)."""
    return libopus.Encoder(24_000, application).lookahead


def opus_encode(x: np.ndarray, bitrate: int, application: str = "voip") -> list[bytes]:
    """Encode float audio at 48 kHz into 20 ms Opus packets (plus one flush frame)."""
    pcm = np.clip(x, -1.0, 1.0).astype(np.float32)
    pad = (-len(pcm)) % OPUS_FRAME
    pcm = np.concatenate([pcm, np.zeros(pad + OPUS_FRAME, np.float32)])  # + flush frame
    enc = libopus.Encoder(bitrate, application)
    return [enc.encode(pcm[i:i + OPUS_FRAME]) for i in range(0, len(pcm), OPUS_FRAME)]


def opus_decode(packets: list[bytes], lost: set[int] | None = None) -> list[np.ndarray]:
    """Decode packets into 20 ms frames; a lost packet gives `None` in its place.

    The decoder never sees a lost packet (as in aiortc, which runs no Opus concealment), and
    the caller conceals."""
    dec = libopus.Decoder()
    return [None if lost and i in lost else dec.decode(packet)  # type: ignore[misc]
            for i, packet in enumerate(packets)]


def conceal(frames: Sequence[np.ndarray | None], method: str,
            frame: int = OPUS_FRAME) -> np.ndarray:
    """Fill lost frames with zeros or a repeat of the previous frame (what simple jitter
    buffers do) and join everything."""
    if method not in ("zero", "repeat"):
        raise ValueError(f"unknown concealment {method!r}")
    joined: list[np.ndarray] = []
    previous = np.zeros(frame, np.float32)
    for f in frames:
        if f is None:
            joined.append(previous.copy() if method == "repeat" else np.zeros(frame, np.float32))
        else:
            joined.append(f)
            if len(f):
                previous = f[-frame:] if len(f) >= frame else np.pad(f, (frame - len(f), 0))
    return np.concatenate(joined) if joined else np.zeros(0, np.float32)


def opus_round_trip(x: np.ndarray, bitrate: int, lost: set[int] | None = None,
                    concealment: str = "zero", application: str = "voip") -> np.ndarray:
    """Encode and decode `x` with libopus; the result has `x`'s length and alignment.

    `lost` holds indices of 20 ms packets that never arrive (concealed by `concealment`).
    """
    frames = opus_decode(opus_encode(x, bitrate, application), lost)
    y = conceal(frames, concealment)
    skip = opus_preskip(application)
    y = y[skip:skip + len(x)]
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)))
    return y.astype(np.float32)


def draw_losses(n_samples: int, rng: np.random.Generator, rate: float,
                burst: float = 0.3) -> set[int]:
    """Indices of lost 20 ms packets: Gilbert-style, a loss is followed by another with
    probability `burst` (real networks lose packets in bursts)."""
    n_packets = -(-n_samples // OPUS_FRAME) + 1
    lost: set[int] = set()
    previous = False
    for i in range(n_packets):
        p = burst if previous else rate
        previous = bool(rng.random() < p)
        if previous:
            lost.add(i)
    return lost


def clip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hard-clip at 30..90 % of the peak (overdriven microphones, analogue gain too high)."""
    peak = float(np.max(np.abs(x))) + 1e-9
    limit = peak * float(rng.uniform(0.3, 0.9))
    return np.clip(x, -limit, limit).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (defaults: augment hard)."""

    p_speech_eq: float = 0.5
    p_noise_eq: float = 0.5
    p_reverb: float = 0.3
    p_real_rir: float = 0.3  # share of reverberated mixes that use a real, not synthetic, RIR
    p_opus: float = 0.8
    opus_bitrates: tuple[int, ...] = OPUS_BITRATES
    p_packet_loss: float = 0.2
    loss_rate: tuple[float, float] = (0.01, 0.1)
    p_clip: float = 0.1

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(p_speech_eq=0, p_noise_eq=0, p_reverb=0, p_opus=0, p_packet_loss=0, p_clip=0)
