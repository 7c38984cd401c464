"""The standard tables the tone detectors recognise: DTMF keys (ITU-T Q.23) and call-progress
tone plans (North America, ITU/Europe, UK): frequencies and cadences."""

from __future__ import annotations

from dataclasses import dataclass

DTMF_ROWS: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS: tuple[str, ...] = ("123A", "456B", "789C", "*0#D")


def dtmf_freqs(digit: str) -> tuple[float, float]:
    """(low, high) frequencies of a DTMF key (Q.23)."""
    for r, row in enumerate(DTMF_KEYS):
        c = row.find(digit.upper())
        if c >= 0:
            return DTMF_ROWS[r], DTMF_COLS[c]
    raise ValueError(f"not a DTMF key: {digit!r}")


@dataclass(frozen=True)
class CallProgressTone:
    """A call-progress tone: its frequencies and cadence (on, off, on, off, ... in seconds)."""

    name: str
    freqs: tuple[float, ...]
    cadence: tuple[float, ...]  # empty: continuous


CALL_PROGRESS_TONES: dict[str, CallProgressTone] = {
    t.name: t
    for t in (
        CallProgressTone("na_dial", (350.0, 440.0), ()),
        CallProgressTone("na_ringback", (440.0, 480.0), (2.0, 4.0)),
        CallProgressTone("na_busy", (480.0, 620.0), (0.5, 0.5)),
        CallProgressTone("na_reorder", (480.0, 620.0), (0.25, 0.25)),
        CallProgressTone("eu_dial", (425.0,), ()),
        CallProgressTone("eu_ringback", (425.0,), (1.0, 4.0)),
        CallProgressTone("eu_busy", (425.0,), (0.5, 0.5)),
        CallProgressTone("uk_dial", (350.0, 450.0), ()),
        CallProgressTone("uk_ringback", (400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
        CallProgressTone("uk_busy", (400.0,), (0.375, 0.375)),
    )
}
