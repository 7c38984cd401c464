"""Call-progress tones and general sustained tones, from the shared 80 ms window spectrum.

Call progress: the one or two strongest peaks in 300-660 Hz must match one of the standard
tone plans (NA precise tones 350+440, 440+480, 480+620; ITU/EU 425; UK 350+450, 400+450, 400)
within +-2.5 % and hold most of the 100-4000 Hz energy. Cadence is not needed to detect; the
bypass is held through the off periods while the line stays quiet.

General tone: at most three spectral peaks hold most of the 100-7800 Hz energy (high
peak-to-floor) and the strongest stays put from hop to hop (speech pitch glides; a tone does not).
"""

from __future__ import annotations

import numpy as np

from denoiser.bypass.analysis import SlidingSpectrum, interpolate_peak
from denoiser.bypass.tone_tables import CALL_PROGRESS_TONES

PLANS: tuple[tuple[float, ...], ...] = tuple(
    sorted({t.freqs for t in CALL_PROGRESS_TONES.values()}))

_PLAN_MIDS = np.array(sorted({(min(p) + max(p)) / 2 for p in PLANS}))


def _local_peaks(p: np.ndarray, band: slice, count: int, floor_ratio: float) -> list[int]:
    """Indices of the `count` strongest local maxima within `band` above max * floor_ratio."""
    seg = p[band]
    if len(seg) < 3:
        return []
    mid = seg[1:-1]
    is_peak = mid > seg[:-2]
    is_peak &= mid >= seg[2:]
    idx = np.flatnonzero(is_peak)
    if len(idx) == 0:
        return []
    vals = mid[idx]
    if len(idx) > count:
        keep = np.argpartition(vals, -count)[-count:]
        idx, vals = idx[keep], vals[keep]
    order = np.argsort(vals)[::-1]
    floor = float(vals[order[0]]) * floor_ratio
    return [band.start + 1 + int(idx[i]) for i in order if vals[i] >= floor]


class CallProgressDetector:
    """Per hop: does the window hold a standard call-progress tone?"""

    def __init__(self, spec: SlidingSpectrum, *, freq_tol: float = 0.025, min_ratio: float = 0.95,
                 min_level_dbfs: float = -45.0, max_drift: float = 0.005) -> None:
        self.spec = spec
        self.freq_tol = freq_tol
        self.min_ratio = min_ratio
        self.min_ms = 10 ** (min_level_dbfs / 10)
        self._band = spec.band(300, 660)
        self.level = 0.0  # mean square of the matched tone
        self.max_drift = max_drift
        self._anchor = 0.0  # lowest frequency when the current match began
        self.matched = False

    def detect(self) -> bool:
        """True when a plan matches and its frequency has held; `matched` says whether a plan
        matches at all (a tone still settling in the window, e.g. at a cadence's restart)."""
        s = self.spec
        self.matched = False
        total = s.band_ms(100, 4000)
        if total < self.min_ms:
            return False
        cluster = s.band_ms(280, 680)
        if cluster < self.min_ratio * total:
            return False
        peaks = _local_peaks(s.power, self._band, 3, 0.1)  # within 10 dB of the strongest
        freqs = sorted(interpolate_peak(s.power, k) * s.bin_hz for k in peaks)
        for plan in PLANS:
            if len(plan) == len(freqs) and all(
                abs(f - g) <= self.freq_tol * g for f, g in zip(freqs, plan, strict=True)
            ):
                # A generator's tone stays put; a voice near 400 Hz (a child's vowel) glides.
                self.matched = True
                anchor, self._anchor = self._anchor, freqs[0]
                if abs(freqs[0] - anchor) > self.max_drift * freqs[0]:
                    return False
                self._anchor = anchor
                self.level = cluster
                return True
        self._anchor = 0.0
        return False


class TonalDetector:
    """Per hop: a few stable, dominant spectral peaks (test tones, fax/modem, SIT, whistles).

    Voiced speech is the look-alike to reject: a vowel's energy sits in a few harmonics too.
    So the strong peaks (within 10 dB of the strongest) must lie at least `min_spacing` Hz apart
    (a voice's harmonics are one pitch, 80-400 Hz, apart), must hold `min_ratio` of the energy,
    and the strongest must stay within `max_drift` of where it was when the run began. Peaks
    below `min_freq` are not looked for: there a lone steady peak is a voice's fundamental (a
    child's vowel can be almost a sine) or mains hum, both for the denoiser.
    """

    def __init__(self, spec: SlidingSpectrum, *, max_peaks: int = 3, min_ratio: float = 0.95,
                 min_level_dbfs: float = -50.0, max_drift: float = 0.005,
                 min_spacing: float = 450.0, min_freq: float = 300.0) -> None:
        self.spec = spec
        self.max_peaks = max_peaks
        self.min_ratio = min_ratio
        self.min_ms = 10 ** (min_level_dbfs / 10)
        self.max_drift = max_drift
        self.min_spacing = min_spacing
        self._band = spec.band(min_freq, 7800)
        self._lobe = 2.0 * spec.rate / spec.win + spec.bin_hz
        self._anchor = 0.0
        self.peak_ratio = 0.0  # share of the band energy in the strongest peaks (a feature too)

    def detect(self) -> bool:
        s = self.spec
        total = s.band_ms(100, 7800)
        peaks = _local_peaks(s.power, self._band, self.max_peaks, 1e-3)
        if total <= 1e-12 or not peaks:
            self.peak_ratio = 0.0
            self._anchor = 0.0
            return False
        freqs = [k * s.bin_hz for k in peaks]
        energies = [s.band_ms(f - self._lobe, f + self._lobe) for f in freqs]
        self.peak_ratio = min(1.0, sum(energies) / total)
        top = s.power[peaks[0]]
        strong = [k * s.bin_hz for k in peaks if s.power[k] >= 0.1 * top]  # side lobes are not
        spaced = all(abs(a - b) >= self.min_spacing
                     for i, a in enumerate(strong) for b in strong[i + 1 :])
        f0 = interpolate_peak(s.power, peaks[0]) * s.bin_hz
        ok = spaced and total >= self.min_ms and self.peak_ratio >= self.min_ratio
        if not ok or abs(f0 - self._anchor) > self.max_drift * f0:
            self._anchor = f0 if ok else 0.0
            return False
        return True


class FastToneCue:
    """Per hop, from the 20 ms spectrum: is a steady narrow-band tone starting here?

    The 80 ms detectors above need 80-100 ms of tone to be sure, and every hop denoised before
    that is lost (DFN3 wipes tones). This cue looks at the short window the DTMF receiver
    already computes: one or two peaks (at least `min_spacing` apart, strongest >= `min_freq`)
    whose main lobes hold >= `min_ratio` of the 100-7800 Hz energy, strongest peak within
    `max_drift` of the previous hop's. Call-progress pairs 40-100 Hz apart merge into one lobe
    here, which is why it only says "narrow band", and `kind()` tells where: the 280-680 Hz
    call-progress cluster or elsewhere. The detector starts a provisional bypass on it and keeps
    it only if the 80 ms detectors confirm within a few hops.
    """

    def __init__(self, spec: SlidingSpectrum, *, min_ratio: float = 0.95,
                 min_level_dbfs: float = -45.0, max_drift: float = 0.006,
                 min_spacing: float = 450.0, min_freq: float = 300.0) -> None:
        self.spec = spec
        self.min_ratio = min_ratio
        self.min_ms = 10 ** (min_level_dbfs / 10)
        self.max_drift = max_drift
        self.min_spacing = min_spacing
        self._band = spec.band(min_freq, 7800)
        self._lobe = 2.0 * spec.rate / spec.win + spec.bin_hz
        self._prev = 0.0
        self.freq = 0.0  # strongest peak of the current hop when it is a tone, else 0
        self.narrow = False

    def detect(self) -> bool:
        s = self.spec
        total = s.band_ms(100, 7800)
        prev, self._prev, self.freq = self._prev, 0.0, 0.0
        self.narrow = False  # one or two narrow peaks hold the energy (drift not checked)
        if total < self.min_ms:
            return False
        # A tone's peak bin holds about its power: without one dominant bin (most hops of
        # speech, music and noise) there is nothing to look for.
        if float(s.power[self._band].max()) * s.tone_scale < 0.3 * total:
            return False
        peaks = _local_peaks(s.power, self._band, 2, 0.1)
        if not peaks:
            return False
        freqs = [interpolate_peak(s.power, k) * s.bin_hz for k in peaks]
        lobe = self._lobe
        energy_merged = False
        if len(freqs) == 2 and abs(freqs[0] - freqs[1]) < self.min_spacing:
            if not all(280.0 <= f <= 680.0 for f in freqs):
                return False  # a voice's harmonics, not a call-progress pair
            energy = s.band_ms(min(freqs) - lobe, max(freqs) + lobe)
            energy_merged = True
        else:
            energy = sum(s.band_ms(f - lobe, f + lobe) for f in freqs)
        if energy < self.min_ratio * total:
            return False
        self.narrow = True
        # Two call-progress tones 40-140 Hz apart beat within the 20 ms window: which of them
        # is the stronger peak changes from hop to hop, their midpoint does not. The 80 ms
        # detector checks the exact frequencies soon after.
        f = (min(freqs) + max(freqs)) / 2 if len(freqs) == 2 and energy_merged else freqs[0]
        self._prev = f
        if abs(f - prev) > self.max_drift * f:
            return False
        self.freq = f
        if 280.0 <= f <= 680.0:  # the middle of a call-progress plan, or not a tone we keep
            return bool(np.any(np.abs(_PLAN_MIDS - f) <= 0.03 * f))
        return True

    def kind(self) -> str:
        """"call_progress" when the tone lies in the call-progress cluster, else "tone"."""
        return "call_progress" if 280.0 <= self.freq <= 680.0 else "tone"
