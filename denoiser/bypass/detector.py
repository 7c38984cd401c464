"""`BypassDetector`: per hop, should this stream's audio pass untouched, and why.

One instance per live stream, fed every raw input hop in order. Detectors, strongest first:
DTMF (exact, Q.24), call-progress tones (exact tone plans), sustained tones (stable dominant
peaks), music (the learned classifier). Each has its own hysteresis so decisions do not flicker:

- dtmf: on from the second hop in a row that holds the same dual tone (fast, so the digit's
  start is not denoised, yet a single transient hop does not count); held 250 ms after the last
  one, through the pauses between digits.
- call_progress: on after 5 hops of a matching tone; held through the cadence's off periods
  (up to 4.5 s, the longest standard silence) while the line stays quiet, and dropped after
  30 ms of non-tone sound louder than the tone minus 15 dB (someone answered).
- tone: on after 5 stable tonal hops, off after 10 hops without.
- music: on after 15 hops in a row with P(music) + P(speech over music) >= `hold_on` (0.8) and
  P(music) >= `music_on` (0.4); off after 50 hops (0.5 s) in a row with P(music) + P(speech
  over music) < `music_off` (0.3); silent hops change nothing. So an announcement over hold
  music keeps the bypass and passes with the music intact, while speech over a music-like noise
  does not start one. In the first 2 s of a music bypass only P(music) keeps it (off after
  30 hops below 0.3): speech right after a short music-like sound is speech over noise.
  See docs/bypass.md for the measurements behind these numbers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from denoiser.bypass.analysis import RATE, Decimator, SlidingSpectrum
from denoiser.bypass.classifier import DEFAULT_PATH, MusicClassifier
from denoiser.bypass.dtmf import DtmfReceiver
from denoiser.bypass.features import ContextFeatures
from denoiser.bypass.tones import CallProgressDetector, FastToneCue, TonalDetector

REASONS: tuple[str, ...] = ("dtmf", "call_progress", "tone", "music")
_SILENT_DB = -60.0
_PROV_HOPS = 15  # a provisional tone bypass must be confirmed within 150 ms
_PROV_MUTE = 100
_STATIC_DB = 2.0  # see ContextFeatures.static_db
_STATIC_HOPS = 5


@lru_cache(maxsize=1)
def default_classifier() -> MusicClassifier:
    """The shipped classifier, loaded once per process and shared (read-only) by all streams."""
    return MusicClassifier(DEFAULT_PATH)


class BypassDetector:
    """Decides per raw input hop whether to keep the original audio (see module doc)."""

    def __init__(self, sample_rate: int = 48_000, hop_size: int = 480, *,
                 classifier: MusicClassifier | None = None, use_music: bool = True,
                 music_on: float = 0.4, hold_on: float = 0.8, music_off: float = 0.3,
                 music_hops: int = 15) -> None:
        if sample_rate % RATE or hop_size * RATE % sample_rate or hop_size * 100 != sample_rate:
            raise ValueError(
                f"need a 10 ms hop at a multiple of {RATE} Hz, got {hop_size} at {sample_rate}")
        self.sample_rate, self.hop_size = sample_rate, hop_size
        self._decim = Decimator(sample_rate // RATE)
        short = SlidingSpectrum(2 * RATE // 100, 1024)
        long = SlidingSpectrum(8 * RATE // 100, 2048)
        self._short, self._long = short, long
        self.dtmf = DtmfReceiver(short)
        self._cp = CallProgressDetector(long)
        self._tonal = TonalDetector(long)
        self._fast = FastToneCue(short)
        self.classifier = (classifier or default_classifier()) if use_music else None
        self._features = ContextFeatures(long)
        self.music_on, self.hold_on = music_on, hold_on
        self.music_off, self.music_hops = music_off, music_hops
        self.p_music = 0.0
        self.p_hold = 0.0
        self.reason: str | None = None
        self._dtmf_hold = 0
        self._dtmf_run = 0
        self._dtmf_last: str | None = None
        self._cp_run = 0
        self._cp_hold = 0
        self._cp_loud = 0
        self._tone_run = 0
        self._tone_off = 0
        self._tone_on = False
        self._music_run = 0
        self._music_off_run = 0
        self._music_age = 0
        self._music_on = False
        self._static_run = 0
        self._since_static = 1_000_000
        self._fast_run = 0
        self._fast_miss = 0
        self._prov: str | None = None  # provisional tone bypass awaiting confirmation
        self._prov_age = 0
        self._prov_mute = 0  # hops before a provisional bypass may start again
        self.provisional_hops = 0
        self.provisional_failed = 0

    @property
    def digits(self) -> list[str]:
        """DTMF digits decoded so far on this stream."""
        return self.dtmf.digits

    def update(self, hop: np.ndarray) -> str | None:
        """Feed one raw hop; returns "dtmf", "call_progress", "tone", "music" or None (denoise)."""
        hop = np.asarray(hop, np.float32)
        if hop.shape != (self.hop_size,):
            raise ValueError(f"expected a hop of shape ({self.hop_size},), got {hop.shape}")
        if not np.all(np.isfinite(hop)):
            hop = np.nan_to_num(hop, nan=0.0, posinf=0.0, neginf=0.0)
        h = self._decim(hop)
        self._short.push(h)
        self._long.push(h)
        hop_ms = float(np.dot(h, h)) / len(h)

        self.dtmf.update(h)
        seen = self.dtmf.present
        self._dtmf_run = self._dtmf_run + 1 if seen and seen == self._dtmf_last else int(bool(seen))
        self._dtmf_last = seen
        if self._dtmf_run >= 2 or (seen and self._dtmf_hold):
            self._dtmf_hold = 25
        else:
            self._dtmf_hold = max(0, self._dtmf_hold - 1)
        cp_active = self._update_call_progress(self._cp.detect(), hop_ms)
        tone_active = self._update_tone(self._tonal.detect())
        self._features.push(hop_ms, self._tonal.peak_ratio)
        music_active = self._update_music(hop_ms)
        prov = self._update_provisional(self._fast.detect(), cp_active or tone_active)

        if self._dtmf_hold:
            self.reason = "dtmf"
        elif cp_active:
            self.reason = "call_progress"
        elif tone_active:
            self.reason = "tone"
        elif prov is not None:
            self.reason = prov
            self.provisional_hops += 1
        elif music_active:
            self.reason = "music"
        else:
            self.reason = None
        return self.reason

    def _update_provisional(self, cue: bool, confirmed: bool) -> str | None:
        """A tone seen by the fast 20 ms cue for 2 hops starts a provisional bypass (with the
        stream's look-ahead that covers the tone from its first sample); it ends when an 80 ms
        detector confirms it (their hysteresis takes over), when the cue is gone for 3 hops, or
        after `_PROV_HOPS` unconfirmed (then no new one for `_PROV_MUTE` hops: a voice that
        looks like a tone for a moment must not keep switching paths)."""
        self._fast_run = self._fast_run + 1 if cue else 0
        self._fast_miss = 0 if cue else self._fast_miss + 1
        self._prov_mute = max(0, self._prov_mute - 1)
        if self._prov is None:
            if self._fast_run >= 2 and not self._prov_mute and not confirmed:
                self._prov, self._prov_age = self._fast.kind(), 0
            return self._prov
        self._prov_age += 1
        if confirmed:
            self._prov = None
        elif self._prov_age >= _PROV_HOPS or self._fast_miss >= 3:
            self._prov = None
            self._prov_mute = _PROV_MUTE
            self.provisional_failed += 1
        return self._prov

    def _update_call_progress(self, seen: bool, hop_ms: float) -> bool:
        if seen:
            self._cp_run += 1
            if self._cp_run >= 5:
                self._cp_hold, self._cp_loud = 450, 0
        else:
            self._cp_run = 0
            if self._cp_hold:
                self._cp_hold -= 1
                quiet = self._cp.matched or hop_ms < self._cp.level * 10 ** (-15 / 10)
                self._cp_loud = 0 if quiet else self._cp_loud + 1
                if self._cp_loud >= 3:
                    self._cp_hold = 0
        return self._cp_hold > 0

    def _update_tone(self, seen: bool) -> bool:
        if seen:
            self._tone_run += 1
            self._tone_off = 0
            if self._tone_run >= 5:
                self._tone_on = True
        else:
            self._tone_run = 0
            self._tone_off += 1
            if self._tone_off >= 10:
                self._tone_on = False
        return self._tone_on

    def _update_music(self, hop_ms: float) -> bool:
        if self.classifier is None:
            return False
        if self._features.context_max_db < _SILENT_DB:
            self.p_music = self.p_hold = 0.0
            return self._music_on
        p = self.classifier.proba(self._features.vector())
        self.p_music = float(p[1])
        self.p_hold = float(p[1] + p[3])  # music, or an announcement over music
        if 10 * np.log10(hop_ms + 1e-10) < _SILENT_DB:
            return self._music_on  # a silent hop says nothing either way
        # A spectrum that has not moved for 250 ms is a drone (buzz, hum), not music: it cannot
        # start a bypass nor keep a young one; speech over it must be cleaned.
        # The classifier's 1 s context still holds the drone for a second after it is masked
        # (speech over it), so the drone's mark lasts that long.
        self._static_run = self._static_run + 1 if self._features.static_db < _STATIC_DB else 0
        self._since_static = 0 if self._static_run >= _STATIC_HOPS else self._since_static + 1
        static = self._since_static < 100
        start = (self.p_music >= self.music_on and self.p_hold >= self.hold_on
                 and not static)
        self._music_run = self._music_run + 1 if start else 0
        if self._music_run >= self.music_hops and not self._music_on:
            self._music_on, self._music_age = True, 0
        self._music_age += 1
        # An announcement keeps the bypass only over music that has played for 2 s: a short
        # music-like sound followed by speech is noise with someone talking over it.
        young = self._music_age < 200
        keep = 0.0 if static and young else self.p_music if young else self.p_hold
        if keep < self.music_off:
            self._music_off_run += 1
            if self._music_off_run >= (30 if young else 50):
                self._music_on = False
        else:
            self._music_off_run = 0
        return self._music_on
