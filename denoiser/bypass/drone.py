"""Is a still spectrum a drone (buzz, hum, engine) or a held note? Per 40 ms frame.

A drone is noise: speech over it must be cleaned, and alone it gains nothing from a bypass. Its
spectrum does not move (`ContextFeatures.static_db`: no mel band changes by 2 dB in 280 ms),
but neither does a held note of a wind or bowed instrument, least of all a sampled one (a
looped sample is as steady as a buzzer). What tells them apart is what happens around the still
stretch: music moves on to another note (an onset, another pitch, another level) within a
second or so, and when it holds still again it is on another note; a drone stays, and when
speech or a noise has covered it for a while, the very same spectrum comes back, and it never
went away in between: what covered it only added to it. So a still stretch (`RUN` frames,
80 ms) is called a drone when

- its spectrum matches one of the still stretches of the last `MEMORY` (6 s) within `MATCH_DB`
  (1.5 dB in every band within 30 dB of the loudest), and no two frames in a row since then
  fell `DROP_DB` (4 dB) below that stretch in its strong bands (within 10 dB of its loudest),
  nor was one silent:
  the same sound, there all along (a melody that comes back to a note went through others);
- or it lasts `LONG_RUN` frames (1.2 s): longer than a held note stays perfectly still (the
  longest in the music dev set: 0.8 s, a clarinet; the dev drones: 0.4-8 s);
- or the stream opened on a drone (`OpeningDrone`, from its first 300 ms): then every still
  stretch is, as before.

A held note that is a stream's first still stretch is never called a drone; a drone that is a
stream's first still stretch (and was not there at its opening) is found when it comes back or
after 1.2 s. Cheap: one 24-band comparison against at most `SLOTS` templates per still frame.

A stretch called a drone stays `present` while it never went away in that sense, whatever covers
it: speech over a buzz hides the buzz's stillness, not the buzz, and the classifier (above all
its floor-tonality cue, which a buzz's steady partials raise as a held chord's do) may call the
mix music. A stream that opened on a drone keeps its first whole 80 ms frame as that drone's
spectrum (`adopt`), since a voice may cover the drone before any still stretch is seen.
"""

from __future__ import annotations

import numpy as np

from denoiser.bypass.features import frames

RUN = frames(80)  # still frames that make a still stretch
LONG_RUN = frames(1200)
MEMORY = frames(6000)
MATCH_DB = 1.5
DROP_DB = 4.0
STRONG_DB = 10.0
SLOTS = 4


class DroneGuard:
    """Feed `update(still, top)` once per non-silent frame; True while a drone holds."""

    def __init__(self, n_bands: int) -> None:
        self._templates = np.zeros((SLOTS, n_bands))
        self._ages = np.full(SLOTS, 1 << 30)  # frames since each template was taken
        self._strong = np.zeros((SLOTS, n_bands), bool)  # each template's strong bands
        self._kept = np.zeros(SLOTS, bool)  # nothing fell below the template since
        self._low = np.zeros(SLOTS, bool)  # the last frame fell below it
        self._droned = np.zeros(SLOTS, bool)  # the template's stretch was called a drone
        self._slot = -1  # the template of the current still stretch
        self._next = 0
        self.run = 0
        self._matched = False
        self.opened_on_drone = False  # set by the detector (OpeningDrone)

    @property
    def present(self) -> bool:
        """A stretch called a drone in the last `MEMORY` frames is still there: no two frames
        in a row since fell `DROP_DB` below it in its strong bands, nor was one silent. Speech
        over a buzz hides its stillness, not the buzz: under the voice it is still a drone."""
        return bool((self._kept & self._droned & (self._ages < MEMORY)).any())

    def adopt(self, top: np.ndarray) -> None:
        """Keep `top` as a drone's template: the spectrum of a stream that opened on a drone
        (`OpeningDrone`), which no still stretch may show again while a voice covers it."""
        slot = self._next
        self._templates[slot] = top
        self._ages[slot] = 0
        self._strong[slot] = top > top.max() - STRONG_DB / 10
        self._kept[slot] = self._droned[slot] = True
        self._low[slot] = False
        self._next = (slot + 1) % SLOTS

    def gap(self) -> None:
        """A silent frame: whatever was still before has gone away."""
        self._kept[:] = False
        self.run = 0
        self._matched = False

    def update(self, still: bool, top: np.ndarray) -> bool:
        """`still`: this frame's spectrum has not moved (static_db); `top`: its floored log-mel
        (log10 units, as ContextFeatures keeps it). Returns whether this frame is a drone."""
        self._ages += 1
        if self._kept.any():
            # two frames in a row below: one 80 ms frame of a voice over a buzz can dip a
            # band by a few dB where the two interfere, the buzz has not gone
            low = np.any((top < self._templates - DROP_DB / 10) & self._strong, axis=1)
            self._kept &= ~(low & self._low)
            self._low[:] = low
        if not still:
            self.run = 0
            self._matched = False
            return False
        self.run += 1
        if self.run < RUN:
            return False
        if self.run == RUN:
            recent = (self._ages < MEMORY) & self._kept
            if recent.any():
                diff = np.abs(self._templates[recent] - top).max(axis=1)
                self._matched = bool((10.0 * diff < MATCH_DB).any())
            slot = self._next
            self._templates[slot] = top
            self._ages[slot] = 0
            self._strong[slot] = top > top.max() - STRONG_DB / 10
            self._kept[slot] = True
            self._droned[slot] = self._low[slot] = False
            self._slot = slot
            self._next = (slot + 1) % SLOTS
        drone = self.opened_on_drone or self._matched or self.run >= LONG_RUN
        if drone:
            self._droned[self._slot] = True
        return drone
