"""Exact tone detectors of the bypass: DTMF (Q.23/Q.24), call-progress tones, sustained tones.

Each clip's decision timeline is checked hop by hop (onset within a few hops, one contiguous
block, release after), not just the end result.
"""

from __future__ import annotations

import numpy as np
import pytest

from denoiser.bypass import BypassDetector, decode_dtmf
from denoiser.bypass.analysis import resample
from denoiser.eval.tone_synth import (
    CALL_PROGRESS_TONES,
    dtmf_freqs,
    dtmf_sequence,
    tone,
    white_noise,
)

SR, HOP = 48_000, 480


def timeline(audio: np.ndarray, det: BypassDetector | None = None) -> list[str | None]:
    det = det or BypassDetector(use_music=False)
    return [det.update(audio[i : i + HOP]) for i in range(0, len(audio) - HOP + 1, HOP)]


def blocks(tl: list[str | None]) -> list[tuple[str | None, int, int]]:
    """Runs of equal decisions: (reason, first hop, end hop)."""
    out: list[tuple[str | None, int, int]] = []
    for i, r in enumerate(tl):
        if out and out[-1][0] == r:
            out[-1] = (r, out[-1][1], i + 1)
        else:
            out.append((r, i, i + 1))
    return out


# ---- DTMF decoding ---------------------------------------------------------------------------

def test_decodes_all_sixteen_keys() -> None:
    x, _ = dtmf_sequence("0123456789*#ABCD")
    assert decode_dtmf(x, SR) == "0123456789*#ABCD"


@pytest.mark.parametrize("sr", [8000, 16000, 44100])
def test_decodes_at_other_rates(sr: int) -> None:
    x, _ = dtmf_sequence("90210#", sr=sr)
    assert decode_dtmf(x, sr) == "90210#"


def test_minimum_timing_40ms_tones_and_pauses_repeat_digits() -> None:
    x, _ = dtmf_sequence("11223", on=0.04, off=0.04)
    assert decode_dtmf(x, SR) == "11223"


def test_too_short_tones_are_rejected() -> None:
    x, _ = dtmf_sequence("123", on=0.02, off=0.06)
    assert decode_dtmf(x, SR) == ""


@pytest.mark.parametrize("twist", [-6.0, -3.0, 0.0, 3.0, 6.0])
def test_twist_within_limits_is_accepted(twist: float) -> None:
    x, _ = dtmf_sequence("5739", twist_db=twist)
    assert decode_dtmf(x, SR) == "5739"


@pytest.mark.parametrize("twist", [-14.0, 14.0])
def test_excessive_twist_is_rejected(twist: float) -> None:
    x, _ = dtmf_sequence("5739", twist_db=twist)
    assert decode_dtmf(x, SR) == ""


@pytest.mark.parametrize("shift,ok", [(0.015, True), (-0.015, True), (0.035, False),
                                      (-0.035, False), (0.05, False)])
def test_frequency_tolerance_q24(shift: float, ok: bool) -> None:
    lo, hi = dtmf_freqs("8")
    x = tone((lo * (1 + shift), hi * (1 + shift)), 0.1)
    x = np.concatenate([x, np.zeros(4800, np.float32)])
    assert decode_dtmf(x, SR) == ("8" if ok else "")


@pytest.mark.parametrize("snr_db", [20.0, 12.0])
def test_decodes_in_white_noise(snr_db: float) -> None:
    x, _ = dtmf_sequence("4#7*0", level_dbfs=-20.0)
    # each tone is -20 dBFS RMS, so the pair is -17 dBFS; noise over the full 24 kHz band
    x = x + white_noise(len(x) / SR, SR, level_dbfs=-17.0 - snr_db, seed=3)
    assert decode_dtmf(x, SR) == "4#7*0"


def test_level_floor() -> None:
    x, _ = dtmf_sequence("12", level_dbfs=-60.0)
    assert decode_dtmf(x, SR) == ""


# ---- DTMF bypass timeline --------------------------------------------------------------------

@pytest.mark.parametrize("twist,noise", [(0.0, None), (5.0, -45.0), (-6.0, -40.0)])
def test_dtmf_timeline_onset_hold_release(twist: float, noise: float | None) -> None:
    digits = "147*2580#369"
    x, spans = dtmf_sequence(digits, on=0.06, off=0.05, twist_db=twist, tail=0.6)
    if noise is not None:
        x = x + white_noise(len(x) / SR, SR, noise, seed=1)
    det = BypassDetector(use_music=False)
    tl = timeline(x, det)
    assert "".join(det.digits) == digits
    first, last_end = spans[0][0] // HOP, spans[-1][1] // HOP
    # nothing before the first digit, dtmf within 2 hops of its onset, then one block
    assert all(r is None for r in tl[:first])
    b = [blk for blk in blocks(tl) if blk[0] is not None]
    assert len(b) == 1 and b[0][0] == "dtmf"
    assert b[0][1] <= first + 2
    # held through every pause and to the end of the last digit, released within 0.3 s after
    assert b[0][2] >= last_end and b[0][2] <= last_end + 30
    assert tl[-1] is None


# ---- call progress ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALL_PROGRESS_TONES))
def test_call_progress_tone_held_through_cadence(name: str) -> None:
    from denoiser.eval.tone_synth import call_progress

    x, _ = call_progress(name, 7.0, SR, level_dbfs=-22.0)
    x = np.concatenate([np.zeros(SR // 2, np.float32), x])
    x = x + white_noise(len(x) / SR, SR, -55.0, seed=2)
    tl = timeline(x)
    start = SR // 2 // HOP
    assert all(r is None for r in tl[:start])
    b = [blk for blk in blocks(tl[start:]) if blk[0] is not None]
    assert len(b) == 1, blocks(tl[start:])  # one decision, held through the off periods
    assert b[0][0] == "call_progress"
    assert b[0][1] <= 8  # onset within 80 ms
    assert b[0][2] == len(tl) - start  # still held at the end (off periods are quiet)


def test_call_progress_released_when_someone_answers() -> None:
    from denoiser.eval.tone_synth import call_progress

    ring, _ = call_progress("na_ringback", 2.5, SR, level_dbfs=-20.0)  # 2 s on, then silence
    rng = np.random.default_rng(5)
    # an answer: loud broadband sound (speech-like bursts of noise) 0.5 s after the tone ends
    answer = (rng.standard_normal(SR) * 0.05).astype(np.float32)
    x = np.concatenate([ring, answer])
    tl = timeline(x)
    onset = len(ring) // HOP
    assert tl[onset - 10] == "call_progress"
    assert all(r is None for r in tl[onset + 5 :])


# ---- sustained tones -------------------------------------------------------------------------

@pytest.mark.parametrize("freqs", [(1000.0,), (2100.0,), (1100.0,), (913.8, 1370.6), (3000.0,)])
def test_sustained_tone_timeline(freqs: tuple[float, ...]) -> None:
    x = np.concatenate([np.zeros(SR // 2, np.float32), tone(freqs, 2.0, SR, -25.0),
                        np.zeros(SR // 2, np.float32)])
    x = x + white_noise(len(x) / SR, SR, -60.0, seed=4)
    tl = timeline(x)
    start, end = SR // 2 // HOP, (SR // 2 + 2 * SR) // HOP
    b = [blk for blk in blocks(tl) if blk[0] is not None]
    assert len(b) == 1 and b[0][0] in ("tone", "call_progress")
    assert start <= b[0][1] <= start + 10
    assert end <= b[0][2] <= end + 20


# ---- robustness ------------------------------------------------------------------------------

def test_silence_and_white_noise_never_bypass() -> None:
    x = np.concatenate([np.zeros(SR, np.float32), white_noise(3.0, SR, -30.0, seed=7)])
    assert set(timeline(x)) == {None}


def test_bad_input_is_rejected_clearly() -> None:
    det = BypassDetector(use_music=False)
    with pytest.raises(ValueError, match="shape"):
        det.update(np.zeros(479, np.float32))
    with pytest.raises(ValueError, match="10 ms hop"):
        BypassDetector(44_100, 441, use_music=False)
    bad = np.full(HOP, np.nan, np.float32)
    assert det.update(bad) is None  # non-finite samples count as silence, the state survives
    x, _ = dtmf_sequence("9")
    tl = timeline(x, det)
    assert "dtmf" in tl and det.digits == ["9"]


def test_rate_16k_matches_48k_decisions() -> None:
    x, _ = dtmf_sequence("36", tail=0.5)
    tl48 = timeline(x)
    x16 = resample(x, SR, 16_000)
    det = BypassDetector(16_000, 160, use_music=False)
    tl16 = [det.update(x16[i : i + 160]) for i in range(0, len(x16) - 159, 160)]
    assert sum(a != b for a, b in zip(tl48, tl16, strict=False)) <= 2
