"""What an end-to-end denoising run is judged by: the clip that is sent, and figures of what came
back (pure numpy; the peers that carry the audio are in `sfu.bench.e2e`).

A clip is clean speech mixed with a real noise recording at an SNR, preceded by a noise-only
stretch (`lead`) and followed by a short noise-only tail, so noise reduction is measured where
there is no speech at all. What a subscriber received is placed on the clip's timeline by
cross-correlation with the sent (noisy) clip; then:

- noise reduction: level of the sent noisy audio minus level received, over the noise-only lead
  (less its first `NR_SETTLE_S`, while the model adapts coming out of the pre-roll silence),
  as one power ratio over the stretch and as the median over its 20 ms blocks (the latter is
  what a listener hears most of the time; a few hops passed through `late` weigh on the first);
- speech level change: level received minus level sent, over 20 ms blocks where the clean
  speech is within `ACTIVE_RANGE_DB` of its loudest block (speech dominates there);
- SI-SDR and log-envelope correlation against the clean speech over the speech part, for the
  sent noisy audio and for the received audio;
- envelope and waveform correlation of received vs sent over the whole clip (the
  pass-through check).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from denoiser.eval.quality import si_sdr

SAMPLE_RATE = 48_000
BLOCK = 960  # 20 ms
NR_SETTLE_S = 0.3
ACTIVE_RANGE_DB = 20.0
ENVELOPE_RANGE_DB = 60.0
_TINY = 1e-12


@dataclass(frozen=True)
class Clip:
    """Mono float32 audio at 48 kHz: `clean[i]` is the speech inside `noisy[i]` (zero in the
    lead and tail); speech occupies `[lead, lead + speech)`."""

    name: str
    clean: np.ndarray
    noisy: np.ndarray
    lead: int
    speech: int
    snr_db: float

    @property
    def samples(self) -> int:
        return int(self.noisy.size)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def level_db(x: np.ndarray) -> float:
    """Mean power in dB (full scale = 0 dB for a +-1 square wave)."""
    return float(10 * np.log10(_power(x) + _TINY))


def mix_clip(name: str, speech: np.ndarray, noise: np.ndarray, snr_db: float, *,
             lead_s: float = 1.5, tail_s: float = 0.5, rms_dbfs: float = -26.0) -> Clip:
    """`lead_s` of noise, then `speech` in that noise at `snr_db` (speech power over the noise
    power under it), then `tail_s` of noise; the noise loops if it is too short. The mix is
    scaled to `rms_dbfs` over the speech part, lower if it would clip. Both sources lose their
    DC offset first (some corpus files carry one, e.g. LibriSpeech 1363-135842-0000 at -0.12:
    it would count as speech power in the SNR, yet no microphone path passes it)."""
    speech = np.asarray(speech, dtype=np.float32).reshape(-1)
    noise = np.asarray(noise, dtype=np.float32).reshape(-1)
    speech = speech - speech.mean(dtype=np.float64)
    noise = noise - noise.mean(dtype=np.float64)
    if speech.size < BLOCK or _power(speech) <= 0:
        raise ValueError(f"{name}: speech is empty or silent")
    if noise.size < BLOCK or _power(noise) <= 0:
        raise ValueError(f"{name}: noise is empty or silent")
    lead, tail = round(lead_s * SAMPLE_RATE), round(tail_s * SAMPLE_RATE)
    total = lead + speech.size + tail
    bed = np.resize(noise, total).astype(np.float64)
    under = bed[lead:lead + speech.size]
    gain = np.sqrt(_power(speech) / (_power(under) * 10 ** (snr_db / 10)))
    clean = np.zeros(total, dtype=np.float64)
    clean[lead:lead + speech.size] = speech
    noisy = clean + gain * bed
    scale = 10 ** (rms_dbfs / 20) / np.sqrt(_power(noisy[lead:lead + speech.size]))
    scale = min(scale, 0.9 / float(np.max(np.abs(noisy))))
    return Clip(name, (clean * scale).astype(np.float32), (noisy * scale).astype(np.float32),
                lead, int(speech.size), float(snr_db))


def find_lag(received: np.ndarray, sent: np.ndarray) -> int:
    """Where `sent` starts inside `received` (the integer lag of the largest cross-correlation,
    computed by FFT); may be negative if `received` started after the clip did."""
    n = received.size + sent.size - 1
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(received, size) * np.conj(np.fft.rfft(sent, size))
    corr = np.fft.irfft(spectrum, size)
    # Lags 0..received.size-1 sit at the start, negative lags wrap to the end.
    lags = np.concatenate([np.arange(received.size), np.arange(-(sent.size - 1), 0)])
    values = np.concatenate([corr[:received.size], corr[size - (sent.size - 1):]])
    return int(lags[int(np.argmax(values))])


def cut(received: np.ndarray, lag: int, length: int) -> np.ndarray:
    """`length` samples of `received` from `lag` (zeros where it has none)."""
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(lag, 0), min(lag + length, received.size)
    if hi > lo:
        out[lo - lag:hi - lag] = received[lo:hi]
    return out


def block_db(x: np.ndarray) -> np.ndarray:
    """Power of each whole 20 ms block, in dB."""
    blocks = x[: x.size // BLOCK * BLOCK].astype(np.float64).reshape(-1, BLOCK)
    return 10 * np.log10(np.mean(blocks**2, axis=1) + _TINY)


def envelope_correlation(reference: np.ndarray, x: np.ndarray) -> float:
    """Pearson correlation of 20 ms log-energy envelopes, both floored `ENVELOPE_RANGE_DB`
    below the reference's loudest block (so digits of silence do not dominate)."""
    ref, got = block_db(reference), block_db(x)
    floor = ref.max() - ENVELOPE_RANGE_DB
    ref, got = np.maximum(ref, floor), np.maximum(got, floor)
    if np.std(ref) == 0 or np.std(got) == 0:
        return 0.0
    return float(np.corrcoef(ref, got)[0, 1])


def waveform_correlation(a: np.ndarray, b: np.ndarray) -> float:
    denom = np.sqrt(np.dot(a.astype(np.float64), a) * np.dot(b.astype(np.float64), b))
    return float(np.dot(a.astype(np.float64), b) / denom) if denom > 0 else 0.0


@dataclass(frozen=True)
class Measures:
    """Figures of one received clip against what was sent (see the module docstring)."""

    lag_samples: int
    noise_reduction_db: float
    noise_reduction_median_db: float
    speech_level_change_db: float
    level_change_db: float
    si_sdr_noisy_db: float
    si_sdr_out_db: float
    envelope_corr_noisy: float
    envelope_corr_out: float
    envelope_corr_sent: float
    waveform_corr: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def speech_blocks(clip: Clip) -> np.ndarray:
    """Indices of 20 ms blocks where the clean speech is within `ACTIVE_RANGE_DB` of its peak."""
    levels = block_db(clip.clean)
    return np.flatnonzero(levels > levels.max() - ACTIVE_RANGE_DB)


def measure(clip: Clip, received: np.ndarray) -> Measures:
    """Align `received` (everything a subscriber got) to the clip and compute the figures."""
    received = np.asarray(received, dtype=np.float32).reshape(-1)
    if received.size < BLOCK:
        raise ValueError(f"{clip.name}: received {received.size} samples, not enough to measure")
    lag = find_lag(received, clip.noisy)
    out = cut(received, lag, clip.samples)
    settle = round(NR_SETTLE_S * SAMPLE_RATE)
    quiet = slice(settle, clip.lead)
    nr = level_db(clip.noisy[quiet]) - level_db(out[quiet])
    nr_blocks = float(np.median(block_db(clip.noisy[quiet]) - block_db(out[quiet])))
    active = speech_blocks(clip)
    sent_blocks = clip.noisy[: clip.samples // BLOCK * BLOCK].reshape(-1, BLOCK)[active]
    out_blocks = out[: clip.samples // BLOCK * BLOCK].reshape(-1, BLOCK)[active]
    speech_change = level_db(out_blocks) - level_db(sent_blocks)
    part = slice(clip.lead, clip.lead + clip.speech)
    clean, noisy, got = clip.clean[part], clip.noisy[part], out[part]
    return Measures(
        lag_samples=lag,
        noise_reduction_db=nr,
        noise_reduction_median_db=nr_blocks,
        speech_level_change_db=speech_change,
        level_change_db=level_db(out) - level_db(clip.noisy),
        si_sdr_noisy_db=si_sdr(clean, noisy),
        si_sdr_out_db=si_sdr(clean, got),
        envelope_corr_noisy=envelope_correlation(clean, noisy),
        envelope_corr_out=envelope_correlation(clean, got),
        envelope_corr_sent=envelope_correlation(clip.noisy, out),
        waveform_corr=waveform_correlation(out, clip.noisy),
    )
