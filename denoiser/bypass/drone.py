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
  (1.5 dB in every band within 30 dB of the loudest), and no frame since then fell `DROP_DB`
  (4 dB) below that stretch in its strong bands (within 10 dB of its loudest), nor was silent:
  the same sound, there all along (a melody that comes back to a note went through others);
- or it lasts `LONG_RUN` frames (1.2 s): longer than a held note stays perfectly still (the
  longest in the music dev set: 0.8 s, a clarinet; the dev drones: 0.4-8 s);
- or the stream opened on a drone (`OpeningDrone`, from its first 300 ms): then every still
  stretch is, as before.

A held note that is a stream's first still stretch is never called a drone; a drone that is a
stream's first still stretch (and was not there at its opening) is found when it comes back or
after 1.2 s. Cheap: one 24-band comparison against at most `SLOTS` templates per still frame.
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
        self._next = 0
        self.run = 0
        self._matched = False
        self.opened_on_drone = False  # set by the detector (OpeningDrone)

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
            low = ((top < self._templates - DROP_DB / 10) & self._strong).any(axis=1)
            self._kept &= ~low
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
            self._next = (slot + 1) % SLOTS
        return self.opened_on_drone or self._matched or self.run >= LONG_RUN
