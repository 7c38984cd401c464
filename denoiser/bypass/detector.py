"""`BypassDetector`: per hop, should this stream's audio pass untouched, and why.

One instance per live stream, fed every raw input hop in order. Detectors, strongest first:
DTMF (exact, Q.24), call-progress tones (exact tone plans), sustained tones (stable dominant
peaks), a provisional tone bypass (fast 20 ms cue), music (the learned classifier). DTMF and the
fast cue read a 20 ms spectrum every hop; call progress, sustained tones and the music features
read an 80 ms spectrum once per 40 ms frame (`FRAME_HOPS` hops), and the classifier runs two
hops later, so the costly work is spread thin (one per stream, in a worker thread).
Each has its own hysteresis so decisions do not flicker:

- dtmf: on from the second hop in a row that holds the same dual tone (fast, so the digit's
  start is not denoised, yet a single transient hop does not count); held 250 ms after the last
  one, through the pauses between digits.
- call_progress: on after 80 ms of a matching tone whose frequency holds; held through the
  cadence's off periods (up to 4.5 s, the longest standard silence) while the line stays quiet,
  and dropped after 40 ms of non-tone sound louder than the tone minus 15 dB (someone answered).
- tone: on after 80 ms of stable tonal frames, off after 120 ms without.
- provisional ("tone" or "call_progress"): the 20 ms cue (`FastToneCue`) held 2 hops starts it
  at once, so that with the stream's 3-hop look-ahead no sample of the tone is denoised; the
  80 ms detectors must confirm it within 200 ms, else it ends and cannot restart for 1 s.
- music: on after 160 ms of frames with P(music) + P(speech over music) >= `hold_on` (0.8)
  and P(music) >= `music_on` (0.4); off after 0.5 s of frames with P(music) + P(speech over
  music) < `music_off` (0.3); silent frames change nothing. So an announcement over hold music
  keeps the bypass and passes with the music intact, while speech over a music-like noise does
  not start one. In the first 2 s of a music bypass only P(music) keeps it (off after 0.2 s
  below 0.3): speech right after a short music-like sound is speech over noise. A drone (a
  buzzer, hum, engine) is not music: for 3 s after one, and while one never went away under
  what covers it (`DroneGuard.present`), it cannot start a music bypass nor keep a young one,
  and a young one found over a drone ends at once. A mel spectrum that has not
  moved by 2 dB in 280 ms is still; a still stretch is a drone only when it is the same
  spectrum as a recent one that never went away meanwhile, lasts 1.2 s, or the stream opened on
  a drone (`DroneGuard`, denoiser/bypass/drone.py): a held note is still too, but music moves
  on to other notes. In a stream's first 280 ms the drone check compares with the stream's
  first whole frame (>= 120 ms back, 1 dB); all along, a spectrum that has not moved by 0.5 dB
  in 120 ms is a drone too; and a stream that opens on a drone is found from its 20 ms
  spectra within 100 ms (`OpeningDrone`), before the early music bypass below can start.
- stream start ("music"): a stream's first `start_hold_ms` (100 ms) pass untouched unless the
  classifier already says P(music) + P(speech over music) < `start_release` (0.2) or a drone
  is found; a music bypass that starts within it takes over. The classifier needs 100-200 ms
  of a stream to say music, and with DFN3 every hop of music denoised before that is lost
  (1 % of a 10 s clip lost caps its SI-SDR near 20 dB), while 100 ms of a line passed as it
  is at a call's opening costs little (docs/bypass.md: the noisy-speech figures). Past
  100 ms the hold goes on, up to `start_extend_ms` (500 ms), while the stream's frames still
  lean to music (P(music) + P(speech over music) >= `start_extend_min`, 0.85; it ends on
  `start_extend_misses`, 2, frames in a row under that): an opening of music still undecided
  at 100 ms would otherwise fade in denoised for the 50-200 ms the classifier takes, and the
  first frames of noisy speech rarely lean that far.
  See docs/bypass.md for the measurements behind these numbers.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from denoiser.bypass.analysis import RATE, Decimator, SlidingSpectrum
from denoiser.bypass.classifier import DEFAULT_PATH, MusicClassifier
from denoiser.bypass.drone import DroneGuard
from denoiser.bypass.dtmf import DtmfReceiver
from denoiser.bypass.features import (
    FRAME_HOPS,
    N_MELS,
    STATIC_LAG,
    ContextFeatures,
    OpeningDrone,
    frames,
)
from denoiser.bypass.tones import CallProgressDetector, FastToneCue, TonalDetector

REASONS: tuple[str, ...] = ("dtmf", "call_progress", "tone", "music")
_SILENT_DB = -60.0
_PROV_HOPS = 20  # a provisional tone bypass must be confirmed within 200 ms
_PROV_MUTE = 100
_STATIC_DB = 2.0  # see ContextFeatures.static_db
_STATIC_DB_START = 1.0  # at the shorter lags of a stream's first 280 ms (music: 1 % below 1.2)
_STATIC_DB_SHORT = 0.5  # at 120 ms, all along
_CP_ON, _CP_HOLD = frames(80), frames(4500)
_TONE_ON, _TONE_OFF = frames(80), frames(120)
_EARLY = frames(500)
_ADOPT_FRAMES = 3  # the first 80 ms frame whose window lies wholly in the stream
_MUSIC_OFF, _YOUNG_OFF, _YOUNG, _DRONE = frames(500), frames(200), frames(2000), frames(3000)


@lru_cache(maxsize=1)
def default_classifier() -> MusicClassifier:
    """The shipped classifier, loaded once per process and shared (read-only) by all streams."""
    return MusicClassifier(DEFAULT_PATH)


class BypassDetector:
    """Decides per raw input hop whether to keep the original audio (see module doc)."""

    def __init__(self, sample_rate: int = 48_000, hop_size: int = 480, *,
                 classifier: MusicClassifier | None = None, use_music: bool = True,
                 music_on: float = 0.4, hold_on: float = 0.8, music_off: float = 0.3,
                 music_frames: int = frames(160), start_hold_ms: float = 100.0,
                 start_release: float = 0.2, start_on_music_only: bool = False,
                 start_extend_ms: float = 500.0, start_extend_min: float = 0.85,
                 start_extend_misses: int = 2) -> None:
        if sample_rate % RATE or hop_size * RATE % sample_rate or hop_size * 100 != sample_rate:
            raise ValueError(
                f"need a 10 ms hop at a multiple of {RATE} Hz, got {hop_size} at {sample_rate}")
        self.sample_rate, self.hop_size = sample_rate, hop_size
        self._decim = Decimator(sample_rate // RATE)
        long = SlidingSpectrum(8 * RATE // 100, 2048)
        short = SlidingSpectrum(2 * RATE // 100, 512, source=long)
        self._short, self._long = short, long
        self.dtmf = DtmfReceiver(short)
        self._cp = CallProgressDetector(long)
        self._tonal = TonalDetector(long)
        self._fast = FastToneCue(short)
        self.classifier = (classifier or default_classifier()) if use_music else None
        self._features = ContextFeatures(long)
        self._opening = OpeningDrone(short)
        self._drone = DroneGuard(N_MELS)
        self.music_on, self.hold_on = music_on, hold_on
        self.music_off, self.music_frames = music_off, music_frames
        # A stream's first hops pass untouched until the classifier has had its say (module doc)
        self.start_hops = round(start_hold_ms / 10) if self.classifier is not None else 0
        self.start_release = start_release
        # past `start_hold_ms` the hold goes on, up to `start_extend_ms`, while the stream's
        # frames still lean to music (module doc)
        self.start_extend_hops = round(start_extend_ms / 10) if self.start_hops else 0
        self.start_extend_min = start_extend_min
        self.start_extend_misses = start_extend_misses
        self._lean_misses = 0  # frames in a row whose lean to music is under the bar
        self.start_on_music_only = start_on_music_only
        self._starting = self.start_hops > 0
        self._start_against = 0
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
        self._music_early = False
        self._since_static = 1_000_000
        self._drone_adopted = False
        self._fast_run = 0
        self._fast_miss = 0
        self._prov: str | None = None  # provisional tone bypass awaiting confirmation
        self._prov_age = 0
        self._prov_mute = 0  # hops before a provisional bypass may start again
        self.provisional_hops = 0
        self._hops = 0
        self._frame_ms = 0.0
        self._last_frame_ms = 0.0
        self.analysed = False  # whether this hop moved the 80 ms analysis on (a frame)
        self._cp_active = self._tone_active = self._music_active = False
        self.provisional_failed = 0

    @property
    def drone(self) -> bool:
        """Whether the drone guard holds now (a drone found within the last 3 s)."""
        return self._since_static < _DRONE

    @property
    def digits(self) -> list[str]:
        """DTMF digits decoded so far on this stream."""
        return self.dtmf.digits

    def update(self, hop: np.ndarray) -> str | None:
        """Feed one raw hop; returns "dtmf", "call_progress", "tone", "music" or None (denoise)."""
        hop = np.asarray(hop, np.float32)
        if hop.shape != (self.hop_size,):
            raise ValueError(f"expected a hop of shape ({self.hop_size},), got {hop.shape}")
        if not math.isfinite(float(np.add.reduce(hop, dtype=np.float64))):  # NaN or inf in it
            hop = np.nan_to_num(hop, nan=0.0, posinf=0.0, neginf=0.0)
        h = self._decim(hop)
        hop_ms = float(h @ h) / len(h)
        # The 80 ms window and everything read from it (call progress, sustained tones, music)
        # move on every second hop: 20 ms frames halve the cost, and the fast 20 ms tone cue
        # and DTMF, which need every hop, do not use it.
        self._hops += 1
        phase = self._hops % FRAME_HOPS
        frame = phase == 0
        self._frame_ms += hop_ms
        self._long.push(h, analyse=frame)  # slides the short window too (a view of its end)
        self._short.push(h)
        self.analysed = frame

        self.dtmf.update(h)
        seen = self.dtmf.present
        self._dtmf_run = self._dtmf_run + 1 if seen and seen == self._dtmf_last else int(bool(seen))
        self._dtmf_last = seen
        if self._dtmf_run >= 2 or (seen and self._dtmf_hold):
            self._dtmf_hold = 25
        else:
            self._dtmf_hold = max(0, self._dtmf_hold - 1)
        if self._opening.active and self.classifier is not None and self._opening.update():
            self._since_static = 0  # the stream opens on a drone: the drone guard from now
            self._drone.opened_on_drone = True
            self._starting = False
        if frame:
            self._last_frame_ms, self._frame_ms = self._frame_ms / FRAME_HOPS, 0.0
            self._cp_active = self._update_call_progress(self._cp.detect())
            self._tone_active = self._update_tone(self._tonal.detect())
            self._features.push(self._last_frame_ms, self._tonal.peak_ratio)
            if (self._drone.opened_on_drone and not self._drone_adopted
                    and self._features.count >= _ADOPT_FRAMES):
                self._drone.adopt(self._features.last_top)  # the opening drone's spectrum
                self._drone_adopted = True
        elif phase == FRAME_HOPS // 2 and self._features.count:
            # the classifier on the frame pushed 2 hops ago: the frame's work spread over two
            # hops, so no hop carries all of it
            self._music_active = self._update_music(self._last_frame_ms)
        if self._starting and ((self._music_active and not self._music_early)
                               or (self._hops > self.start_hops and not self._start_extends())):
            self._starting = False  # confirmed music takes over, or the hold's time is up
        cue = self._fast.detect()
        self._check_answer(hop_ms, self._fast.narrow)
        cp_active, tone_active = self._cp_active, self._tone_active
        music_active = self._music_active
        prov = self._update_provisional(cue, cp_active or tone_active)

        if self._dtmf_hold:
            self.reason = "dtmf"
        elif cp_active:
            self.reason = "call_progress"
        elif tone_active:
            self.reason = "tone"
        elif prov is not None:
            self.reason = prov
            self.provisional_hops += 1
        elif music_active or self._starting:
            self.reason = "music"
        else:
            self.reason = None
        return self.reason

    def _start_extends(self) -> bool:
        """Whether the start hold goes on past `start_hold_ms` (module doc)."""
        return (self._hops <= self.start_extend_hops
                and self._lean_misses < self.start_extend_misses)

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

    def _update_call_progress(self, seen: bool) -> bool:
        """Per frame: start after `_CP_ON` frames, hold through the cadence's off periods."""
        if seen:
            self._cp_run += 1
            if self._cp_run >= _CP_ON:
                self._cp_hold, self._cp_loud = _CP_HOLD, 0
        else:
            self._cp_run = 0
            self._cp_hold = max(0, self._cp_hold - 1)
        return self._cp_hold > 0

    def _check_answer(self, hop_ms: float, tone_hop: bool) -> None:
        """Per hop, while a call-progress hold lasts through an off period: 3 hops (30 ms) of
        sound louder than the tone minus 15 dB that is not the tone mean someone answered."""
        if not self._cp_hold or self._cp_run:
            return
        quiet = tone_hop or self._cp.matched or hop_ms < self._cp.level * 10 ** (-15 / 10)
        self._cp_loud = 0 if quiet else self._cp_loud + 1
        if self._cp_loud >= 3:
            self._cp_hold = 0
            self._cp_active = False

    def _update_tone(self, seen: bool) -> bool:
        if seen:
            self._tone_run += 1
            self._tone_off = 0
            if self._tone_run >= _TONE_ON:
                self._tone_on = True
        else:
            self._tone_run = 0
            self._tone_off += 1
            if self._tone_off >= _TONE_OFF:
                self._tone_on = False
        return self._tone_on

    def _update_music(self, frame_ms: float) -> bool:
        if self.classifier is None:
            return False
        if self._features.context_max_db < _SILENT_DB:
            self.p_music = self.p_hold = 0.0
            self._lean_misses += 1
            return self._music_on
        p = self.classifier.proba(self._features.vector())
        self.p_music = float(p[1])
        self.p_hold = float(p[1] + p[3])  # music, or an announcement over music
        self._lean_misses = 0 if self.p_hold >= self.start_extend_min else self._lean_misses + 1
        if self._starting:
            # the start hold ends on clear evidence against music: one frame far below
            # `start_release`, or two in a row below it (a stream's first frames are unsure,
            # and one unsure frame must not fade music in denoised). The evidence is
            # P(music) + P(speech over music), or with `start_on_music_only` P(music) alone
            # (early frames of speech in noise often look like an announcement over music).
            ev = self.p_music if self.start_on_music_only else self.p_hold
            if ev < self.start_release / (4 if self.start_on_music_only else 2):
                self._starting = False
            elif ev < self.start_release:
                self._start_against += 1
                self._starting = self._start_against < 2
            else:
                self._start_against = 0
        if 10 * np.log10(frame_ms + 1e-10) < _SILENT_DB:
            self._drone.gap()
            return self._music_on  # a silent frame says nothing either way
        # A spectrum that has not moved for 260 ms is a drone (buzz, hum), not music: it cannot
        # start a bypass nor keep a young one; speech over it must be cleaned.
        # The classifier's 1 s context still holds the drone for a second after it is masked
        # (speech over it), so the drone's mark lasts that long.
        f = self._features
        limit = _STATIC_DB if f.static_lag == STATIC_LAG else _STATIC_DB_START
        still = f.static_db < limit or f.static_short_db < _STATIC_DB_SHORT
        self._static_run = self._static_run + 1 if still else 0
        drone = self._drone.update(still, f.last_top)
        self._since_static = 0 if drone else self._since_static + 1
        static = self._since_static < _DRONE or self._drone.present
        if static:
            self._starting = False
        if not self._since_static and self._music_on and self._music_age < _YOUNG:
            self._music_on = self._music_early = False  # a drone found under a young bypass
            self._music_run = self._music_off_run = 0
            return False
        start = (self.p_music >= self.music_on and self.p_hold >= self.hold_on
                 and not static)
        self._music_run = self._music_run + 1 if start else 0
        if self._music_run >= self.music_frames and not self._music_on:
            self._music_on, self._music_age = True, 0
        # A stream that starts with music (a call that opens on hold) would lose its first
        # 160 ms: in the first 0.5 s one frame starts a provisional bypass, which ends at once
        # unless every frame up to the usual `music_frames` agrees.
        early = self._features.count <= _EARLY
        if early and self._music_run and not self._music_on:
            self._music_on, self._music_age, self._music_early = True, 0, True
        if self._music_early:
            if not self._music_run:
                self._music_on = self._music_early = False
                return False
            if self._music_run >= self.music_frames:
                self._music_early = False
        self._music_age += 1
        # An announcement keeps the bypass only over music that has played for 2 s: a short
        # music-like sound followed by speech is noise with someone talking over it.
        young = self._music_age < _YOUNG
        keep = 0.0 if static and young else self.p_music if young else self.p_hold
        if keep < self.music_off:
            self._music_off_run += 1
            if self._music_off_run >= (_YOUNG_OFF if young else _MUSIC_OFF):
                self._music_on = False
        else:
            self._music_off_run = 0
        return self._music_on
