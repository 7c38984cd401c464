"""Cheap per-hop features for the speech / music / noise classifier, with a sliding context.

Per hop (from the shared 80 ms spectrum at 16 kHz, 60-7000 Hz only, since the training corpus is
wideband): the log-mel shape (level removed, so the decision does not depend on gain), positive
spectral flux, spectral flatness, the share of energy in the three strongest peaks, and the
10 ms log energy. Over a sliding context of up to one second (and a short one of 250 ms, so that
a change is seen quickly) these become the classifier input: the mean mel shape, and the means
and spreads of flux, flatness and peakiness, and how the energy is modulated (speech has
syllables and pauses; music and most noise do not).
"""

from __future__ import annotations

import math

import numpy as np

from denoiser.bypass.analysis import SlidingSpectrum

N_MELS = 24
LONG = 100  # hops (1 s)
SHORT = 25  # hops (250 ms)
N_GROUPS = 6  # coarse mel shape: groups of N_MELS // N_GROUPS bands
PERSIST_LAG = 8  # hops between the spectra compared for peak persistence
STATIC_LAG = 25  # hops (250 ms) between the mel spectra compared for `static_db`
_FULL = 8  # the first hop whose 80 ms window holds no zeros from before the stream


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


class ContextFeatures:
    """Streaming feature extractor: call `push(...)` once per hop, read `vector()`.

    Context statistics are running sums over ring buffers (long and short), so a hop costs the
    same whatever the context length; they are recomputed exactly now and then against drift.
    The mel shape is kept coarse (6 groups of 4 bands) so that the model learns how music moves
    rather than the timbre of the few tracks it was trained on.
    """

    n_hop = N_GROUPS + 6  # shape, flux, log flatness, peak ratio, persistence, log e, |delta e|
    _E = N_GROUPS + 4

    def __init__(self, spec: SlidingSpectrum) -> None:
        self.spec = spec
        cols = spec.band(60, 7000)
        self._cols = cols
        self.fb = mel_filterbank(spec.freqs[cols]).astype(np.float64)
        pk = spec.band(100, 5000)
        self._pk = slice(pk.start - cols.start, pk.stop - cols.start)
        self._masks = np.zeros((PERSIST_LAG, pk.stop - pk.start), bool)
        self._prev_lm: np.ndarray | None = None
        self._lm_ring = np.zeros((STATIC_LAG, N_MELS))
        # Largest change of any mel band over the last 250 ms, dB: a drone (a buzzer, hum, an
        # engine) stays within 1-2 dB; music never did (5 % quantile >= 8 dB on every track).
        self.static_db = 100.0
        self.ring = np.zeros((LONG, self.n_hop))
        self.count = 0
        self._s1 = np.zeros(self.n_hop)
        self._s2 = np.zeros(self.n_hop)
        self._t1 = np.zeros(self.n_hop)
        self._t2 = np.zeros(self.n_hop)

    def push(self, hop_ms: float, peak_ratio: float) -> None:
        """Add the current hop: `hop_ms` is its mean square, `peak_ratio` from TonalDetector."""
        p = self.spec.power[self._cols]
        lm = np.log10(self.fb @ p + 1e-10)
        level = float(lm.sum()) / N_MELS
        flux = 0.0 if self._prev_lm is None else float(
            np.maximum(lm - self._prev_lm, 0).sum()) / N_MELS
        self._prev_lm = lm
        slot = self.count % STATIC_LAG
        top = np.maximum(lm, lm.max() - 3.0)  # bands 30 dB under the loudest are the floor
        if self.count >= STATIC_LAG + _FULL:
            self.static_db = 10.0 * float(np.abs(top - self._lm_ring[slot]).max())
        self._lm_ring[slot] = top
        n = len(p)
        flat = float(np.log(p + 1e-12).sum()) / n - math.log(float(p.sum()) / n + 1e-12)
        persist = self._persistence(p[self._pk])
        e = 10 * math.log10(hop_ms + 1e-10)
        de = abs(e - self.ring[(self.count - 1) % LONG, self._E]) if self.count else 0.0
        row = np.empty(self.n_hop)
        row[:N_GROUPS] = (lm - level).reshape(N_GROUPS, -1).mean(1)
        row[N_GROUPS:] = (flux, flat, peak_ratio, persist, e, de)
        slot = self.count % LONG
        old = self.ring[slot]
        if self.count >= LONG:
            self._s1 -= old
            self._s2 -= old * old
        if self.count >= SHORT:
            gone = self.ring[(self.count - SHORT) % LONG]
            self._t1 -= gone
            self._t2 -= gone * gone
        self.ring[slot] = row
        self.count += 1
        rr = row * row
        self._s1 += row
        self._s2 += rr
        self._t1 += row
        self._t2 += rr
        if self.count % 1000 == 0:
            self._resum()

    def _persistence(self, p: np.ndarray) -> float:
        """Share of this hop's spectral peaks (within 25 dB of the top) that were there 80 ms ago.

        Sustained notes keep their peaks; speech pitch glides and noise peaks are random. The
        spectra compared do not overlap in time, so window overlap does not inflate it.
        """
        mid = p[1:-1]
        mask = np.zeros(len(p), bool)
        mask[1:-1] = (mid > p[:-2]) & (mid >= p[2:]) & (mid > p.max() * 10**-2.5)
        near = self._masks[self.count % PERSIST_LAG].copy()
        self._masks[self.count % PERSIST_LAG] = mask
        n = int(np.count_nonzero(mask))
        return float(np.count_nonzero(mask & near)) / n if n else 0.0

    def _resum(self) -> None:
        """Exact sums from the ring buffer (against floating-point drift)."""
        r = self.ring
        self._s1, self._s2 = r.sum(0), (r * r).sum(0)
        short = r[(np.arange(self.count - SHORT, self.count)) % LONG]
        self._t1, self._t2 = short.sum(0), (short * short).sum(0)

    @property
    def context_max_db(self) -> float:
        n = min(self.count, LONG)
        return float(self.ring[:n, self._E].max()) if n else -100.0

    def vector(self) -> np.ndarray:
        """The classifier input for the context ending at the latest hop."""
        n = min(self.count, LONG)
        if n == 0:
            raise ValueError("no hop pushed yet")
        ns = min(self.count, SHORT)
        m = self._s1 / n
        sd = np.sqrt(np.maximum(self._s2 / n - m * m, 0.0))
        ms = self._t1 / ns
        sds = np.sqrt(np.maximum(self._t2 / ns - ms * ms, 0.0))
        e = self.ring[:n, self._E]
        pauses = float(np.count_nonzero(e < e.max() - 15.0)) / n
        g, b = N_GROUPS, N_GROUPS + 4
        out = np.empty(N_FEATURES, np.float32)
        out[:g] = m[:g]
        out[g] = float(sd[:g].sum()) / g
        out[g + 1 : g + 5] = m[g:b]
        out[g + 5 : g + 9] = sd[g:b]
        out[g + 9 : g + 13] = ms[g:b]
        out[g + 13 :] = (sd[b], sds[b], pauses, m[b + 1] / 10.0, n / LONG)
        return out


N_FEATURES = N_GROUPS + 1 + 12 + 5
