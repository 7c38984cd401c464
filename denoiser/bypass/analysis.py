"""Shared per-hop signal analysis: decimation to 16 kHz and a sliding windowed spectrum.

Everything the bypass detectors need lies below 8 kHz (DTMF and call-progress tones below 2 kHz,
and the music features are restricted to 0-8 kHz because the training corpus is wideband), so
the raw 48 kHz hop is decimated once and the detectors share one FFT per hop.
"""

from __future__ import annotations

import math

import numpy as np

RATE = 16_000  # internal analysis rate


def lowpass_taps(factor: int, n_taps: int = 48) -> np.ndarray:
    """Windowed-sinc anti-alias low-pass for decimation by `factor` (cutoff 0.45 x new rate)."""
    cutoff = 0.9 / (2 * factor)  # in cycles per input sample
    n = np.arange(n_taps) - (n_taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(n_taps)
    return (h / h.sum()).astype(np.float32)


class Decimator:
    """Streaming integer-factor decimator (FIR low-pass, then keep every `factor`-th sample)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.taps = lowpass_taps(factor) if factor > 1 else np.ones(1, np.float32)
        self._hist = np.zeros(len(self.taps) - 1, np.float32)
        self._rtaps = np.ascontiguousarray(self.taps[::-1])
        self._buf: np.ndarray | None = None
        self._frames = np.zeros((0, len(self.taps)), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.factor == 1:
            return x
        if len(x) % self.factor:
            raise ValueError(f"block length {len(x)} is not a multiple of {self.factor}")
        nh = len(self._hist)
        buf = self._buf
        if buf is None or len(buf) != nh + len(x):
            buf = self._buf = np.zeros(nh + len(x), np.float32)
            buf[:nh] = self._hist
            # Only every factor-th output is kept, so compute only those: one strided
            # matrix-vector product (a view on `buf`, made once) instead of a convolution.
            self._frames = np.lib.stride_tricks.as_strided(
                buf[self.factor - 1 :], (len(x) // self.factor, nh + 1),
                (buf.strides[0] * self.factor, buf.strides[0]), writeable=False)
        else:
            buf[:nh] = buf[len(x):]
        buf[nh:] = x
        self._hist = buf[len(x):]
        return self._frames @ self._rtaps


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Offline band-limited resampling by FFT (for whole clips, not the per-hop path)."""
    if sr_in == sr_out:
        return np.asarray(x, np.float32)
    n_out = round(len(x) * sr_out / sr_in)
    spec = np.fft.rfft(x)
    keep = min(len(spec), n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, complex)
    out_spec[:keep] = spec[:keep]
    return (np.fft.irfft(out_spec, n_out) * (n_out / len(x))).astype(np.float32)


class SlidingSpectrum:
    """Power spectrum of the last `win` samples (Hann), zero-padded to `nfft`.

    `tone_scale` converts a bin's power into the RMS^2 of a sine at that frequency, so that
    `power[k] * tone_scale / mean_square` is the fraction of the signal a pure tone there holds.
    `push(x)` slides a block in and (with `analyse`) recomputes `power` and its running sum.
    """

    def __init__(self, win: int, nfft: int, rate: int = RATE,
                 source: SlidingSpectrum | None = None) -> None:
        self.win, self.nfft, self.rate = win, nfft, rate
        self.window = np.hanning(win).astype(np.float32)
        # With a `source` (a longer window over the same signal, pushed first) this window is a
        # view of the end of its buffer, and `push` only analyses.
        if source is not None and source.win < win:
            raise ValueError("the source window must be at least as long")
        self._source = source
        self.buf: np.ndarray = (np.zeros(win, np.float32) if source is None
                                else source.buf[-win:])
        self.freqs = np.fft.rfftfreq(nfft, 1 / rate)
        self.bin_hz = rate / nfft
        # |X(f)|^2 of a sine of amplitude A is (A * sum(w) / 2)^2; its RMS^2 is A^2 / 2.
        self.tone_scale = 2.0 / float(self.window.sum()) ** 2
        self.power = np.zeros(nfft // 2 + 1)
        self._cum = np.zeros(nfft // 2 + 2)
        self._xw = np.zeros(win, np.float32)
        self._w2 = float(np.dot(self.window, self.window))
        self._band_scale = 2.0 / (nfft * self._w2)

    def push(self, x: np.ndarray, analyse: bool = True) -> None:
        """Slide `x` in; with `analyse` (else the spectrum keeps describing an earlier window)
        recompute the power spectrum."""
        buf = self.buf
        if self._source is None:
            n = len(x)
            buf[:-n] = buf[n:]
            buf[-n:] = x
        if not analyse:
            return
        spec = np.fft.rfft(np.multiply(buf, self.window, out=self._xw), self.nfft)
        re, im = spec.real, spec.imag
        power = np.multiply(re, re, out=self.power)
        power += im * im
        np.cumsum(power, out=self._cum[1:])

    @property
    def mean_square(self) -> float:
        """Of the window-weighted signal, in the units of a tone's RMS^2 (from `power`)."""
        return float(self._cum[-1]) * self._band_scale

    def band(self, lo: float, hi: float) -> slice:
        """Bin slice covering [lo, hi] Hz."""
        return slice(max(0, int(np.ceil(lo / self.bin_hz))), int(hi / self.bin_hz) + 1)

    def band_ms(self, lo: float, hi: float) -> float:
        """Mean square of the signal within [lo, hi] Hz (Parseval on the zero-padded FFT)."""
        k0 = max(0, math.ceil(lo / self.bin_hz))
        k1 = min(len(self.power), int(hi / self.bin_hz) + 1)
        return float(self._cum[k1] - self._cum[k0]) * self._band_scale if k1 > k0 else 0.0


def interpolate_peak(power: np.ndarray, k: int) -> float:
    """Fractional bin of a spectral peak by parabolic interpolation on log power."""
    if k <= 0 or k >= len(power) - 1:
        return float(k)
    a = math.log(float(power[k - 1]) + 1e-20)
    b = math.log(float(power[k]) + 1e-20)
    c = math.log(float(power[k + 1]) + 1e-20)
    den = a - 2 * b + c
    return float(k) if den >= 0 else k + 0.5 * (a - c) / den
