"""DTMF receiver after ITU-T Q.23/Q.24, working on the shared 16 kHz short-window spectrum.

Per hop (10 ms) the strongest peak in the low group band and in the high group band are located
to a fraction of a bin; a hop holds a digit when both peaks lie within +-2.5 % of a Q.23
frequency (Q.24: accept within 1.5 %, reject beyond 3.5 %), the twist is within limits, the two
tones hold most of the 100-4000 Hz energy (so speech and music do not trigger it) and the level
is above the sensitivity floor. A digit is accepted after two steady hops (about 40 ms of tone)
and ends at the first hop without it (a pause of 40 ms or more).

`present` (any hop with a dual tone) drives the bypass decision, which must be fast; the digit
state machine drives `digits`, the decoded sequence.
"""

from __future__ import annotations

import numpy as np

from denoiser.bypass.analysis import RATE, SlidingSpectrum, interpolate_peak, resample
from denoiser.bypass.tone_tables import DTMF_COLS, DTMF_KEYS, DTMF_ROWS

HOP = RATE // 100  # 160 samples at 16 kHz
_ROWS = np.array(DTMF_ROWS)
_COLS = np.array(DTMF_COLS)


class DtmfReceiver:
    """Streaming DTMF detection on 16 kHz hops of 160 samples."""

    def __init__(self, spectrum: SlidingSpectrum | None = None, *, freq_tol: float = 0.025,
                 max_forward_twist_db: float = 8.0, max_reverse_twist_db: float = 8.0,
                 min_ratio: float = 0.8, min_level_dbfs: float = -45.0,
                 steady_db: float = 6.0, accept_hops: int = 2) -> None:
        # 20 ms Hann: main lobe +-100 Hz, narrow enough to split 941 from 1209 Hz.
        self.spec = spectrum or SlidingSpectrum(2 * HOP, 512)
        self._own_spec = spectrum is None
        self.freq_tol = freq_tol
        self.twist = (-max_reverse_twist_db, max_forward_twist_db)
        self.min_ratio = min_ratio
        self.min_ms = 10 ** (min_level_dbfs / 10)
        self.steady = 10 ** (steady_db / 10)
        self.accept_hops = accept_hops
        s = self.spec
        self._low = s.band(650, 990)
        self._high = s.band(1150, 1700)
        self._lobe = 2.0 * s.rate / s.win  # Hann main-lobe half width in Hz
        self.present: str | None = None  # digit seen in this hop (not yet accepted)
        self.digit: str | None = None  # accepted digit currently sounding
        self.digits: list[str] = []
        self._run = 0
        self._cand: str | None = None

    def _peak(self, band: slice, nominal: np.ndarray) -> tuple[float, int, bool]:
        p = self.spec.power
        k = band.start + int(np.argmax(p[band]))
        f = interpolate_peak(p, k) * self.spec.bin_hz
        i = int(np.argmin(np.abs(nominal - f)))
        return f, i, abs(f - nominal[i]) <= self.freq_tol * nominal[i]

    def _classify(self) -> tuple[str | None, bool]:
        """The digit in the current window, if any, and whether the window is steady."""
        s = self.spec
        total = s.band_ms(100, 4000)
        if total < self.min_ms:
            return None, False
        # Cheap gate first: a tone's peak bin holds about its power, and the two tones must
        # hold most of the band, so two weak maxima rule a digit out (most hops of speech).
        p = s.power
        if (p[self._low].max() + p[self._high].max()) * s.tone_scale < 0.4 * total:
            return None, False
        f_lo, r, ok_lo = self._peak(self._low, _ROWS)
        f_hi, c, ok_hi = self._peak(self._high, _COLS)
        if not (ok_lo and ok_hi):
            return None, False
        e_lo = s.band_ms(f_lo - self._lobe, f_lo + self._lobe)
        e_hi = s.band_ms(f_hi - self._lobe, f_hi + self._lobe)
        if min(e_lo, e_hi) < self.min_ms / 2 or (e_lo + e_hi) < self.min_ratio * total:
            return None, False
        twist = 10 * np.log10(e_hi / e_lo)
        if not self.twist[0] <= twist <= self.twist[1]:
            return None, False
        half = len(s.buf) // 2
        a = float(np.dot(s.buf[:half], s.buf[:half])) + 1e-12
        b = float(np.dot(s.buf[half:], s.buf[half:])) + 1e-12
        return DTMF_KEYS[r][c], max(a, b) <= self.steady * min(a, b)

    def update(self, hop16: np.ndarray) -> str | None:
        """Feed one 16 kHz hop; returns a newly accepted digit, if one starts here."""
        if self._own_spec:
            self.spec.push(hop16)
        digit, steady = self._classify()
        self.present = digit
        if self.digit is not None:
            if digit == self.digit:
                return None
            self.digit = None  # a pause (or another digit) ends it
        if digit is not None and steady:
            self._run = self._run + 1 if digit == self._cand else 1
            self._cand = digit
        else:
            self._run, self._cand = 0, None
        if self._run >= self.accept_hops and digit is not None:
            self.digit = digit
            self.digits.append(digit)
            self._run, self._cand = 0, None
            return digit
        return None


def decode_dtmf(audio: np.ndarray, sr: int) -> str:
    """Decode the DTMF digits in a clip (any sample rate) with the Q.24 receiver above."""
    x = resample(np.asarray(audio, np.float32), sr, RATE)
    rx = DtmfReceiver()
    for i in range(0, len(x) - HOP + 1, HOP):
        rx.update(x[i : i + HOP])
    return "".join(rx.digits)
