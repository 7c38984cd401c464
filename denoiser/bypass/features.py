"""Cheap features for the speech / music / noise classifier, with a sliding context.

Per 40 ms frame (from the shared 80 ms spectrum at 16 kHz, 60-7000 Hz only, since the training
corpus is wideband): the log-mel shape (level removed, so the decision does not depend on
gain), positive spectral flux, spectral flatness, the share of energy in the three strongest
peaks, peak persistence and the 40 ms log energy. Over a sliding context of up to one second
(and a short one of 280 ms, so that a change is seen quickly) these become the classifier
input: the mean mel shape, and the means and spreads of flux, flatness and peakiness, and how
the energy is modulated (speech has syllables and pauses; music and most noise do not).

Cues that say "music" rather than "not this voice" (issue 16):
- pitch on a semitone grid (`grid`): the strongest peaks' frequencies as angles on the
  equal-tempered semitone circle, summed over the context, weighted by level. Notes of any
  instrument sit on one grid (whatever its tuning, or a speed change), so the sum adds up; a
  voice's pitch glides across the grid and the angles cancel. Its harmonics 1, 2, 3, 4, 6, 8 lie
  within 0.05 semitone of the grid of the fundamental, so one frame of a voice is coherent too;
  only the context (the voice's pitch moving) tells them apart.
- peak persistence at 160 ms as well as 80 ms (a sustained note rings; a voice's peaks move);
- syllable-rate modulation: the share of the 1 s energy envelope's modulation power at 2.5-6 Hz
  (speech's syllables), against 0.5-10 Hz;
- rhythm: the strongest autocorrelation of the onset envelope (positive flux) over the last 2 s
  at lags of 0.2-1 s (a beat repeats; syllables do not keep time).
- floor tonality (`FloorTonality`): how far the narrow peaks of the context's spectral floor
  (each bin's minimum over the last second, 80-2000 Hz) stand above their surroundings.
  Partials that ring through a whole second (held notes, chords, a bass line that returns to
  its notes) survive the minimum as sharp peaks; a voice's harmonics move with its pitch and
  its pauses empty every bin, so its floor is the noise's: smooth. In the music dev set the
  third-largest prominence was 10-40 dB (median 18), on noisy speech 9-12 dB.
"""

from __future__ import annotations

import math

import numpy as np

from denoiser.bypass.analysis import SlidingSpectrum

N_MELS = 24
FRAME_HOPS = 4  # the 80 ms analysis moves on once per 4 hops (a 40 ms frame), see BypassDetector


def frames(ms: float) -> int:
    """A duration in analysis frames (at least one)."""
    return max(1, round(ms / (10 * FRAME_HOPS)))


LONG = frames(1000)  # the context
SHORT = frames(280)  # the short context, so that a change is seen quickly
N_GROUPS = 6  # coarse mel shape: groups of N_MELS // N_GROUPS bands
PERSIST_LAG = frames(80)  # between the spectra compared for peak persistence (no overlap)
STATIC_LAG = frames(280)  # between the mel spectra compared for `static_db`
STATIC_MIN_LAG = 3  # a stream's first frames compare with its first whole window, >= 120 ms back
PERSIST_LAG2 = frames(160)
RHYTHM = frames(2000)  # onset envelope kept for the rhythm cue
RHYTHM_LAGS = (frames(200), frames(1000))
GRID_PEAKS = 6  # strongest peaks per frame read for the semitone grid
_MOD_WINDOW = np.hanning(LONG)
_MOD_F = np.fft.rfftfreq(LONG, 10 * FRAME_HOPS / 1000)
_MOD_SYL = (_MOD_F >= 2.5) & (_MOD_F <= 6.0)
_MOD_ALL = (_MOD_F >= 0.5) & (_MOD_F <= 10.0)


def mel_filterbank(freqs: np.ndarray, n_mels: int = N_MELS, lo: float = 60.0,
                   hi: float = 7000.0) -> np.ndarray:
    """Triangular mel filters [n_mels, len(freqs)] (HTK mel scale)."""
    def to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = 700.0 * (10 ** (np.linspace(to_mel(lo), to_mel(hi), n_mels + 2) / 2595.0) - 1.0)
    fb = np.zeros((n_mels, len(freqs)), np.float32)
    for m in range(n_mels):
        left, centre, right = edges[m : m + 3]
        up = (freqs - left) / (centre - left)
        down = (right - freqs) / (right - centre)
        fb[m] = np.clip(np.minimum(up, down), 0.0, None)
    return fb


FLOOR_BAND = (80.0, 2000.0)
FLOOR_SMOOTH = 21  # bins (7.8 Hz each at 16 kHz): the surroundings a floor peak stands above
FLOOR_RANK = 3  # the third-largest peak: one stray bin or one held partial is not enough


class FloorTonality:
    """The floor-tonality cue (module doc), one frame at a time: the third-largest prominence
    (dB) of the local maxima of each bin's minimum log power over the last `LONG` frames."""

    def __init__(self, spec: SlidingSpectrum) -> None:
        self.spec = spec
        self._cols = spec.band(*FLOOR_BAND)
        n = self._cols.stop - self._cols.start
        self._ring = np.full((LONG, n), np.inf)
        self._count = 0
        self._padded = np.zeros(n + FLOOR_SMOOTH)

    def push(self) -> float:
        """Add the current frame's spectrum; returns the cue over the context so far."""
        ring = self._ring
        lp = ring[self._count % LONG]
        np.log10(self.spec.power[self._cols] + 1e-12, out=lp)
        lp *= 10.0
        self._count += 1
        floor = ring.min(axis=0) if self._count >= LONG else ring[: self._count].min(axis=0)
        half = FLOOR_SMOOTH // 2
        padded = self._padded
        # [0, edge x half, floor, edge x half]: its cumulative sum gives the centred mean
        padded[1 : half + 1] = floor[0]
        padded[half + 1 : half + 1 + len(floor)] = floor
        padded[half + 1 + len(floor) :] = floor[-1]
        cs = np.cumsum(padded)
        base = (cs[FLOOR_SMOOTH:] - cs[:-FLOOR_SMOOTH]) / FLOOR_SMOOTH
        mid = floor[1:-1]
        is_peak = (mid >= floor[:-2]) & (mid >= floor[2:])
        peaks = mid[is_peak] - base[1:-1][is_peak]
        if len(peaks) < FLOOR_RANK:
            return 0.0
        return float(np.partition(peaks, -FLOOR_RANK)[-FLOOR_RANK])


class ContextFeatures:
    """Streaming feature extractor: call `push(...)` once per frame, read `vector()`.

    Context statistics are running sums over a ring buffer (long and short context), so a frame
    costs the same whatever the context length; they are recomputed exactly now and then against
    drift. The mel shape is kept coarse (6 groups of 4 bands) so that the model learns how music
    moves rather than the timbre of the few tracks it was trained on. Everything per frame is a
    handful of whole-array numpy calls (every stream runs one, per hop).
    """

    # shape, flux, log flatness, peak ratio, persistence, log e, |delta e|, then persistence at
    # 160 ms and the semitone-grid sums (level-weighted cos, sin, weight)
    n_hop = N_GROUPS + 10
    _E = N_GROUPS + 4
    _P2 = N_GROUPS + 6
    _G = N_GROUPS + 7

    def __init__(self, spec: SlidingSpectrum) -> None:
        self.spec = spec
        cols = spec.band(60, 7000)
        self._cols = cols
        self.fb = mel_filterbank(spec.freqs[cols]).astype(np.float64)
        # mel shape groups with the level removed, as one matrix: mean of 4 bands - mean of all
        group = np.kron(np.eye(N_GROUPS), np.full(N_MELS // N_GROUPS, N_GROUPS / N_MELS))
        self._shape = group - 1.0 / N_MELS
        pk = spec.band(100, 5000)
        self._pk = slice(pk.start - cols.start, pk.stop - cols.start)
        self._masks = np.zeros((PERSIST_LAG2, pk.stop - pk.start), bool)
        gr = spec.band(150, 4000)
        self._gr = slice(gr.start - cols.start, gr.stop - cols.start)
        self._gr_f = spec.freqs[gr]
        self._bin_hz = spec.bin_hz
        self._flux = np.zeros(RHYTHM)
        self._prev_lm = np.zeros(N_MELS)
        self._lm_ring = np.zeros((STATIC_LAG, N_MELS))
        # Largest change of any mel band over the last 280 ms, dB: a drone (a buzzer, hum, an
        # engine) stays within 1-2 dB; music never did (5 % quantile >= 8 dB on every track).
        # In a stream's first 280 ms the lag is shorter (`static_lag` frames, from
        # STATIC_MIN_LAG, against the first frame whose window is all stream), so that a
        # stream that opens on a drone is known for one within 200 ms.
        self.static_db = 100.0
        self.static_lag = 0
        self.static_short_db = 100.0  # the same at STATIC_MIN_LAG frames, all along
        # ring[k] = (row, row**2) of frame k; acc = running sums of both over the long and the
        # short context
        self.ring = np.zeros((LONG, 2, self.n_hop))
        self._floor = FloorTonality(spec)
        self.floor_db = 0.0
        self._zero = np.zeros((2, self.n_hop))
        self.acc = np.zeros((2, 2, self.n_hop))
        self.count = 0

    def push(self, frame_ms: float, peak_ratio: float) -> None:
        """Add the current frame: `frame_ms` is its mean square, `peak_ratio` from
        TonalDetector."""
        p = self.spec.power[self._cols]
        lm = self.fb @ p
        lm += 1e-10
        np.log10(lm, out=lm)
        count = self.count
        flux = float(np.maximum(lm - self._prev_lm, 0).sum()) / N_MELS if count else 0.0
        self._prev_lm = lm
        slot = count % STATIC_LAG
        top = np.maximum(lm, lm.max() - 3.0)  # bands 30 dB under the loudest are the floor
        lag = min(STATIC_LAG, count - 1)  # frame 0's window is half before the stream
        if lag >= STATIC_MIN_LAG:
            self.static_db = 10.0 * float(np.abs(top - self._lm_ring[(count - lag) % STATIC_LAG])
                                          .max())
            self.static_lag = lag
            self.static_short_db = 10.0 * float(
                np.abs(top - self._lm_ring[(count - STATIC_MIN_LAG) % STATIC_LAG]).max())
        self._lm_ring[slot] = top
        n = len(p)
        flat = float(np.log(p + 1e-12).sum()) / n - math.log(float(p.sum()) / n + 1e-12)
        persist, persist2 = self._persistence(p[self._pk])
        gc, gs, gw = self._grid(p[self._gr])
        e = 10 * math.log10(frame_ms + 1e-10)
        slot = count % LONG
        de = abs(e - self.ring[(count - 1) % LONG, 0, self._E]) if count else 0.0
        gone_long = self.ring[slot].copy() if count >= LONG else self._zero
        gone_short = self.ring[(count - SHORT) % LONG] if count >= SHORT else self._zero
        new = self.ring[slot]
        row = new[0]
        row[:N_GROUPS] = self._shape @ lm
        row[N_GROUPS:] = (flux, flat, peak_ratio, persist, e, de, persist2, gc, gs, gw)
        self._flux[count % RHYTHM] = flux
        self.floor_db = self._floor.push()
        np.multiply(row, row, out=new[1])
        self.acc += new
        self.acc[0] -= gone_long
        self.acc[1] -= gone_short
        self.count = count + 1
        if self.count % 1000 == 0:
            self._resum()

    def _persistence(self, p: np.ndarray) -> tuple[float, float]:
        """Shares of this frame's spectral peaks (within 25 dB of the top) that were there 80 ms
        and 160 ms ago.

        Sustained notes keep their peaks; speech pitch glides and noise peaks are random. The
        spectra compared do not overlap in time, so window overlap does not inflate it.
        """
        mid = p[1:-1]
        masks = self._masks
        near = masks[(self.count - PERSIST_LAG) % PERSIST_LAG2, 1:-1]
        near2 = masks[self.count % PERSIST_LAG2, 1:-1]
        peak = (mid > p[:-2]) & (mid >= p[2:])
        peak &= mid > p.max() * 10**-2.5
        n = int(np.count_nonzero(peak))
        out = ((float(np.count_nonzero(peak & near)) / n, float(np.count_nonzero(peak & near2)) / n)
               if n else (0.0, 0.0))
        masks[self.count % PERSIST_LAG2, 1:-1] = peak
        return out

    def _grid(self, p: np.ndarray) -> tuple[float, float, float]:
        """The strongest peaks (150-4000 Hz, within 30 dB of the top) as level-weighted unit
        vectors at their angle on the semitone circle (see the module doc)."""
        mid = p[1:-1]
        peak = (mid > p[:-2]) & (mid >= p[2:]) & (mid > p.max() * 1e-3)
        k = np.flatnonzero(peak)
        if len(k) == 0:
            return 0.0, 0.0, 0.0
        if len(k) > GRID_PEAKS:
            k = k[np.argpartition(mid[k], -GRID_PEAKS)[-GRID_PEAKS:]]
        k += 1
        a, b, c = np.log(p[k - 1] + 1e-20), np.log(p[k] + 1e-20), np.log(p[k + 1] + 1e-20)
        den = a - 2 * b + c
        off = np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
        f = self._gr_f[k] + off * self._bin_hz
        theta = (2 * np.pi * 12) * np.log2(f / 440.0)
        w = np.sqrt(p[k])
        w /= w.sum()
        return float(w @ np.cos(theta)), float(w @ np.sin(theta)), 1.0

    def _resum(self) -> None:
        """Exact sums from the ring buffer (against floating-point drift)."""
        r = self.ring
        self.acc[0] = r.sum(0)
        self.acc[1] = r[(np.arange(self.count - SHORT, self.count)) % LONG].sum(0)

    @property
    def last_top(self) -> np.ndarray:
        """The latest frame's log-mel spectrum (log10), bands 30 dB under the loudest floored:
        what `static_db` compares."""
        return self._lm_ring[(self.count - 1) % STATIC_LAG]

    @property
    def context_max_db(self) -> float:
        n = min(self.count, LONG)
        return float(self.ring[:n, 0, self._E].max()) if n else -100.0

    def vector(self) -> np.ndarray:
        """The classifier input for the context ending at the latest frame."""
        n = min(self.count, LONG)
        if n == 0:
            raise ValueError("no frame pushed yet")
        ns = min(self.count, SHORT)
        mom = self.acc / np.array((n, ns), float)[:, None, None]  # [long/short, mean/mean sq]
        m = mom[:, 0]
        sd = np.sqrt(np.maximum(mom[:, 1] - m * m, 0.0))
        e = self.ring[:n, 0, self._E]
        pauses = float(np.count_nonzero(e < e.max() - 15.0)) / n
        g, b = N_GROUPS, N_GROUPS + 4
        ml, sdl = m[0], sd[0]
        gi = self._G
        s = self.acc[:, 0, gi : gi + 3]  # grid sums over the long and the short context
        grid = np.hypot(s[:, 0], s[:, 1]) / np.maximum(s[:, 2], 1.0)
        return np.concatenate((
            ml[:g], (float(sdl[:g].sum()) / g,), ml[g:b], sdl[g:b], m[1, g:b],
            (sdl[b], sd[1, b], pauses, ml[b + 1] / 10.0, n / LONG),
            (ml[self._P2], m[1, self._P2], grid[0], grid[1], self._syllable_share(e),
             self._rhythm(), self.floor_db / 10.0))).astype(np.float32)

    def _syllable_share(self, e: np.ndarray) -> float:
        """Share of the energy envelope's modulation power (0.5-10 Hz) at 2.5-6 Hz, over the
        last second (0.5 below a full second of stream)."""
        if self.count < LONG:
            return 0.5
        order = np.arange(self.count - LONG, self.count) % LONG
        x = np.maximum(e[order], e.max() - 40.0)
        x = (x - x.mean()) * _MOD_WINDOW
        pw = np.abs(np.fft.rfft(x)) ** 2
        tot = float(pw[_MOD_ALL].sum())
        return float(pw[_MOD_SYL].sum()) / tot if tot > 1e-9 else 0.5

    def _rhythm(self) -> float:
        """Strongest normalised autocorrelation of the onset envelope over the last 2 s at lags
        of 0.2-1 s (0 before 1.4 s of stream)."""
        n = min(self.count, RHYTHM)
        lo, hi = RHYTHM_LAGS
        if n < hi + frames(400):
            return 0.0
        x = self._flux[np.arange(self.count - n, self.count) % RHYTHM]
        x = x - x.mean()
        den = float(x @ x)
        if den <= 1e-12:
            return 0.0
        lags = np.arange(lo, hi + 1)
        ac = [float(x[lag:] @ x[:-lag]) * n / (n - lag) for lag in lags]
        return max(0.0, max(ac) / den)


N_FEATURES = N_GROUPS + 1 + 12 + 5 + 6 + 1


class OpeningDrone:
    """Does a stream open on a drone? From the 20 ms spectrum, every hop of its first 300 ms.

    The 80 ms checks (`ContextFeatures.static_db`) need 200 ms of a stream before they can
    compare frames, and the stream's early provisional music bypass can start before that: a
    buzz or hum at a call's opening (the classifier calls it music) would be bypassed, and with
    speech over it soon after, never found. Here the level-free mel spectrum of each 20 ms hop
    is compared with the one 60 ms earlier: a drone does not move by 0.5 dB in two hops in a
    row; in the first 300 ms of the twelve music clips of the evaluation the smallest such
    change was 0.8 dB, and never twice in a row under 1.2 dB.
    """

    HOPS = 30  # looked at over a stream's first 300 ms
    LAG = 6  # hops between the spectra compared
    LIMIT_DB = 0.5
    RUN = 2

    def __init__(self, spec: SlidingSpectrum) -> None:
        self.spec = spec
        self._cols = spec.band(60, 7000)
        self.fb = mel_filterbank(spec.freqs[self._cols]).astype(np.float64)
        self._ring = np.zeros((self.LAG, N_MELS))
        self._hops = 0
        self._run = 0

    @property
    def active(self) -> bool:
        return self._hops < self.HOPS

    def update(self) -> bool:
        """Per hop, after the 20 ms spectrum moved on: True when the stream opens on a drone."""
        if self._hops >= self.HOPS:
            return False
        k = self._hops
        self._hops += 1
        lm = self.fb @ self.spec.power[self._cols]
        lm += 1e-10
        np.log10(lm, out=lm)
        top = np.maximum(lm, lm.max() - 3.0)
        slot = k % self.LAG
        # hop 0's 20 ms window is half before the stream: compare from hop 1 + LAG on
        still = k > self.LAG and 10.0 * float(np.abs(top - self._ring[slot]).max()) < self.LIMIT_DB
        self._ring[slot] = top
        self._run = self._run + 1 if still else 0
        return self._run >= self.RUN
