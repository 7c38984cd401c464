"""Speech quality metrics: PESQ-WB, STOI, SI-SDR and DNSMOS OVRL, on 48 kHz mono signals.

- PESQ wideband (ITU-T P.862.2, the `pesq` package) runs at 16 kHz: both signals are resampled.
- STOI (`pystoi`) works internally at 10 kHz; we hand it the 16 kHz signals (it resamples).
- SI-SDR (Le Roux et al. 2019) is computed at 48 kHz, the rate the system outputs, so energy an
  enhancer leaves or invents above 8 kHz counts against it.
- DNSMOS P.835 OVRL (non-intrusive) uses the ONNX model shipped inside the `speechmos` wheel,
  at 16 kHz. We run that model with onnxruntime ourselves, reproducing `speechmos.dnsmos` for the
  OVRL score exactly (tile to 9.01 s, 1 s hops, its polynomial mapping), because importing
  `speechmos.dnsmos` needs librosa only for the P.808 score, which we do not report.
  Signals are clipped to [-1, 1] first, as playback through int16 would.

Every function takes the clean reference (where it needs one) and the estimate, both
float arrays of the same length, and raises `MetricError` with a clear message on bad input.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from denoiser.eval.audio_checks import problem_with_mono_float

SAMPLE_RATE = 48_000
METRICS: tuple[str, ...] = ("pesq", "stoi", "si_sdr", "dnsmos_ovrl")  # the bar's four
# Also reported: DNSMOS BAK (background), which shows a noise floor that OVRL averages away.
REPORTED: tuple[str, ...] = (*METRICS, "dnsmos_bak")

_DNSMOS_SR = 16_000
_DNSMOS_INPUT_S = 9.01
_DNSMOS_OVRL_POLY = np.poly1d([-0.06766283, 1.11546468, 0.04602535])
_DNSMOS_BAK_POLY = np.poly1d([-0.13166888, 1.60915514, -0.39604546])  # speechmos's fits


class MetricError(ValueError):
    """A metric cannot be computed for this input (wrong shape, silence, too short...)."""


def _mono(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    problem = problem_with_mono_float(x)
    if problem:
        raise MetricError(f"{what}: {problem}")
    return x.astype(np.float64)


def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, est = _mono(ref, "reference"), _mono(est, "estimate")
    if ref.shape != est.shape:
        raise MetricError(f"reference and estimate differ in length: {ref.shape[0]} vs "
                          f"{est.shape[0]} samples (align them first)")
    if not np.any(ref):
        raise MetricError("reference is all zeros")
    return ref, est


def to_16k(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample to 16 kHz (polyphase, anti-aliased)."""
    if sample_rate == _DNSMOS_SR:
        return np.asarray(x, dtype=np.float64)
    if sample_rate % _DNSMOS_SR:
        raise MetricError(f"sample rate {sample_rate} is not a multiple of 16000")
    return resample_poly(np.asarray(x, dtype=np.float64), 1, sample_rate // _DNSMOS_SR)


def pesq_wb(ref: np.ndarray, est: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """PESQ wideband MOS-LQO (about 1.0 to 4.64)."""
    from pesq import PesqError, pesq

    ref, est = _pair(ref, est)
    if ref.shape[0] < sample_rate // 4:
        raise MetricError("PESQ needs at least 0.25 s of audio")
    try:
        return float(pesq(_DNSMOS_SR, to_16k(ref, sample_rate), to_16k(est, sample_rate), "wb"))
    except PesqError as exc:
        raise MetricError(f"PESQ failed: {type(exc).__name__}: {exc}") from exc


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Short-time objective intelligibility (0 to 1)."""
    from pystoi import stoi as _stoi

    ref, est = _pair(ref, est)
    return float(_stoi(to_16k(ref, sample_rate), to_16k(est, sample_rate), _DNSMOS_SR,
                       extended=False))


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (zero-mean signals)."""
    ref, est = _pair(ref, est)
    ref = ref - ref.mean()
    est = est - est.mean()
    scale = np.dot(est, ref) / np.dot(ref, ref)
    target = scale * ref
    noise = est - target
    eps = np.finfo(np.float64).tiny
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


@cache
def _dnsmos_session():  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise MetricError("DNSMOS needs the `speechmos` package (pip install 'denoise-sfu[eval]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not path.is_file():
        raise MetricError(f"DNSMOS model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def dnsmos(est: np.ndarray, sample_rate: int = SAMPLE_RATE, hop_s: float = 1.0,
           max_segments: int | None = None) -> dict[str, float]:
    """DNSMOS P.835 (non-intrusive, about 1 to 5): overall quality and background.

    Scored over 9.01 s segments every `hop_s` (speechmos's 1 s by default), at most
    `max_segments` of them.
    """
    audio = np.clip(to_16k(_mono(est, "estimate"), sample_rate), -1.0, 1.0).astype(np.float32)
    if audio.shape[0] < _DNSMOS_SR // 2:
        raise MetricError("DNSMOS needs at least 0.5 s of audio")
    seg_len = int(_DNSMOS_INPUT_S * _DNSMOS_SR)
    while audio.shape[0] < seg_len:  # speechmos tiles short clips the same way
        audio = np.append(audio, audio)
    starts = range(0, audio.shape[0] - seg_len + 1, int(hop_s * _DNSMOS_SR))
    session = _dnsmos_session()
    ovrl, bak = [], []
    for start in starts[:max_segments]:
        seg = audio[start:start + seg_len]
        _sig, raw_bak, raw_ovr = session.run(None, {"input_1": seg[np.newaxis, :]})[0][0]
        ovrl.append(_DNSMOS_OVRL_POLY(raw_ovr))
        bak.append(_DNSMOS_BAK_POLY(raw_bak))
    return {"dnsmos_ovrl": float(np.mean(ovrl)), "dnsmos_bak": float(np.mean(bak))}


def dnsmos_ovrl(est: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """DNSMOS P.835 overall quality (non-intrusive, about 1 to 5)."""
    return dnsmos(est, sample_rate)["dnsmos_ovrl"]


def gap_noise_reduction(ref: np.ndarray, noisy: np.ndarray, est: np.ndarray, hop: int = 480,
                        below_db: float = -50.0, guard_hops: int = 2,
                        min_hops: int = 10) -> float | None:
    """Noise reduction (dB) where the talker is silent: the noisy input's energy over the
    estimate's, summed over the 10 ms hops in which the clean reference is `below_db` under its
    own mean power, leaving out `guard_hops` hops either side of speech (the STFT window and a
    denoiser's look-ahead smear speech into those). None when fewer than `min_hops` such hops.

    DNSMOS BAK hardly sees a noise floor left in pauses when speech runs through most of a
    clip; this measures it directly (`bench e2e` measures the same through the SFU)."""
    ref, est = _pair(ref, est)
    noisy = _mono(noisy, "noisy input")
    if noisy.shape != ref.shape:
        raise MetricError("noisy input and reference differ in length")
    n = ref.shape[0] // hop
    if n == 0:
        return None

    def hop_power(x: np.ndarray) -> np.ndarray:
        return np.square(x[:n * hop]).reshape(n, hop).sum(axis=1)

    ref_p = hop_power(ref)
    speech = ref_p >= ref_p.mean() * 10.0 ** (below_db / 10.0)
    near_speech = speech.copy()
    for shift in range(1, guard_hops + 1):
        near_speech[shift:] |= speech[:-shift]
        near_speech[:-shift] |= speech[shift:]
    gap = ~near_speech
    if gap.sum() < min_hops:
        return None
    noise_in, left = hop_power(noisy)[gap].sum(), hop_power(est)[gap].sum()
    if noise_in <= 0:
        return None
    return float(10.0 * np.log10(noise_in / max(left, 1e-20)))


def all_metrics(ref: np.ndarray, est: np.ndarray,
                sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """Every metric of `REPORTED` for one (reference, estimate) pair."""
    return {
        "pesq": pesq_wb(ref, est, sample_rate),
        "stoi": stoi(ref, est, sample_rate),
        "si_sdr": si_sdr(ref, est),
        **dnsmos(est, sample_rate),
    }
