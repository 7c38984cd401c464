"""Streaming sample-rate conversion with an exactly known, whole-sample delay.

A rational-ratio polyphase resampler with a Kaiser-windowed sinc low-pass (linear phase). Its
delay is a design choice, not a measurement: the filter's centre `D` (in the up-sampled domain)
is rounded up so that `input_delay * up + D` is a multiple of `down`, which makes the total
delay of the signal, counted in OUTPUT samples, an integer:

    delay = (input_delay * up + D) / down          (`Resampler.delay`)

Output sample `m` therefore estimates the band-limited input at time `m - delay` (output
samples). Pass the delay a signal already carries (`input_delay`, in INPUT samples) when chaining,
e.g. 44.1 kHz -> 48 kHz -> model -> 44.1 kHz, and the last stage's `delay` is the whole chain's,
exactly, so `denoise` can cut it off and stay sample-aligned.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Resampler:
    """Stateful resampler: feed chunks of any length with `process`, get what is ready."""

    def __init__(self, in_rate: int, out_rate: int, *, zero_crossings: int = 16,
                 rolloff: float = 0.945, beta: float = 8.6, input_delay: int = 0) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if input_delay < 0:
            raise ValueError("input_delay must be >= 0")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        g = math.gcd(self.in_rate, self.out_rate)
        self.up, self.down = self.out_rate // g, self.in_rate // g
        self.identity = self.up == self.down
        if self.identity:
            self.delay = int(input_delay)
            return
        half = zero_crossings * max(self.up, self.down)
        centre = half + (-(input_delay * self.up + half)) % self.down
        self.delay = (input_delay * self.up + centre) // self.down
        self.filter_delay = centre  # in up-sampled samples
        length = 2 * centre + 1
        j = np.arange(length) - centre
        cutoff = rolloff / max(self.up, self.down)  # relative to the up-sampled Nyquist
        h = cutoff * np.sinc(cutoff * j) * np.kaiser(length, beta) * self.up
        self.taps = -(-length // self.up)  # input samples per output sample
        padded = np.zeros(self.taps * self.up)
        padded[:length] = h
        # poly[r, k] = h[r + k*up]; stored reversed along k to meet oldest-first windows.
        self._poly = padded.reshape(self.taps, self.up).T[:, ::-1].astype(np.float32).copy()
        self._buf = np.zeros(self.taps - 1, dtype=np.float32)  # x[-taps+1 .. -1] = 0
        self._buf_start = -(self.taps - 1)  # absolute input index of _buf[0]
        self._received = 0
        self._next_out = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed input samples (mono); returns every output sample now computable."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected mono 1-D audio, got shape {chunk.shape}")
        if self.identity:
            return chunk.copy()
        self._buf = np.concatenate([self._buf, chunk])
        self._received += chunk.size
        # Output m needs input index floor(m*down/up) <= received - 1.
        last = (self._received * self.up - 1) // self.down  # largest computable m
        m = np.arange(self._next_out, last + 1, dtype=np.int64)
        if m.size:
            pos = m * self.down
            newest = pos // self.up - self._buf_start  # buffer index of x[floor(p/up)]
            windows = sliding_window_view(self._buf, self.taps)[newest - self.taps + 1]
            out = np.einsum("nk,nk->n", windows, self._poly[pos % self.up])
            self._next_out = int(last) + 1
        else:
            out = np.zeros(0, dtype=np.float32)
        keep_from = (self._next_out * self.down) // self.up - self.taps + 1
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return out.astype(np.float32, copy=False)


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-signal conversion, aligned (delay removed), length round(n * out / in)."""
    rs = Resampler(in_rate, out_rate)
    n_out = round(audio.size * out_rate / in_rate)
    parts = [rs.process(audio)]
    got = parts[0].size
    while got < rs.delay + n_out:
        tail = rs.process(np.zeros(max(1, in_rate // 100), dtype=np.float32))
        parts.append(tail)
        got += tail.size
    return np.concatenate(parts)[rs.delay:rs.delay + n_out]
