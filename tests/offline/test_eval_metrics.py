"""PESQ-WB, STOI, SI-SDR and DNSMOS OVRL wrappers on real speech and noise."""

from __future__ import annotations

import numpy as np
import pytest

from denoiser.eval.quality import (
    MetricError,
    all_metrics,
    dnsmos_ovrl,
    gap_noise_reduction,
    pesq_wb,
    si_sdr,
    stoi,
)
from support.sample_audio import noise_48k, speech_48k


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy at 5 dB SNR) from real speech and a recorded noise, 3 s at 48 kHz."""
    s = speech_48k()[: 3 * 48_000].astype(np.float64)
    n = noise_48k()[: s.size].astype(np.float64)
    n *= np.sqrt(np.sum(s**2) / np.sum(n**2)) / 10 ** (5 / 20)
    return s, s + n


def test_si_sdr_matches_the_snr_and_ignores_scale(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    assert si_sdr(clean, 0.3 * clean) > 100
    # Noise nearly orthogonal to speech: SI-SDR is close to the SNR of the mix.
    assert si_sdr(clean, noisy) == pytest.approx(5.0, abs=0.5)
    assert si_sdr(clean, 2 * noisy) == pytest.approx(si_sdr(clean, noisy), abs=1e-6)


def test_intrusive_metrics_rank_clean_above_noisy(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    assert pesq_wb(clean, clean) > 4.5
    assert 1.0 <= pesq_wb(clean, noisy) < 3.0
    assert stoi(clean, clean) > 0.99
    assert 0.5 < stoi(clean, noisy) < 0.98


def test_dnsmos_ovrl_prefers_clean_speech(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    good, bad = dnsmos_ovrl(clean), dnsmos_ovrl(noisy)
    assert 1.0 <= bad < good <= 5.0
    assert good - bad > 0.5
    # Louder than full scale is clipped (as playback would), not an error.
    assert 1.0 <= dnsmos_ovrl(noisy * 3) <= 5.0


def test_dnsmos_bak_hears_the_background(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """BAK rates the background: clean speech scores far above the same speech in noise; the
    OVRL it comes with is the one `dnsmos_ovrl` gives."""
    from denoiser.eval.quality import dnsmos
    clean, noisy = pair
    good, bad = dnsmos(clean), dnsmos(noisy)
    assert 1.0 <= bad["dnsmos_bak"] < good["dnsmos_bak"] <= 5.0
    assert good["dnsmos_bak"] - bad["dnsmos_bak"] > 0.5
    assert good["dnsmos_ovrl"] == dnsmos_ovrl(clean)


def test_all_metrics_keys(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    assert set(all_metrics(clean, noisy)) == {"pesq", "stoi", "si_sdr", "dnsmos_ovrl",
                                              "dnsmos_bak"}


def test_clear_errors(pair: tuple[np.ndarray, np.ndarray]) -> None:
    clean, noisy = pair
    with pytest.raises(MetricError, match="differ in length"):
        si_sdr(clean, noisy[:-1])
    with pytest.raises(MetricError, match="all zeros"):
        pesq_wb(np.zeros_like(clean), noisy)
    with pytest.raises(MetricError, match="mono"):
        stoi(np.stack([clean, clean]), np.stack([noisy, noisy]))
    with pytest.raises(MetricError, match="NaN"):
        dnsmos_ovrl(np.full(48_000, np.nan))
    with pytest.raises(MetricError, match="at least"):
        dnsmos_ovrl(clean[:1000])
    with pytest.raises(MetricError, match="PESQ"):
        pesq_wb(clean[:4000], noisy[:4000])


def test_gap_noise_reduction_measures_the_pauses_only(
        pair: tuple[np.ndarray, np.ndarray]) -> None:
    """Real speech with a 1 s pause cut into it, real noise: an estimate that keeps the speech
    and a tenth of the noise amplitude measures 20 dB; speech left in or removed elsewhere does
    not move the figure; no pause, no figure."""
    clean, noisy = pair
    noise = noisy - clean
    paused = clean.copy()
    paused[48_000:96_000] = 0.0
    mix = paused + noise
    assert gap_noise_reduction(paused, mix, paused + 0.1 * noise) == pytest.approx(20.0, abs=1e-6)
    # Damage to the speech is another metric's business: the gap figure ignores it.
    assert gap_noise_reduction(paused, mix, 0.5 * paused + 0.1 * noise) == pytest.approx(
        20.0, abs=1e-6)
    assert gap_noise_reduction(paused, mix, mix) == pytest.approx(0.0, abs=1e-9)
    # Noise left inside the pause counts in full; noise left where the talker talks hardly
    # does (only the recording's own short silences are gaps too).
    inside = np.zeros_like(noise)
    inside[48_000:96_000] = noise[48_000:96_000]
    assert gap_noise_reduction(paused, mix, paused + inside) < 0.1
    assert gap_noise_reduction(paused, mix, paused + (noise - inside)) > 15.0
    assert gap_noise_reduction(noisy, noisy, clean) is None  # a reference with no pause
    with pytest.raises(MetricError):
        gap_noise_reduction(paused, mix[:-1], paused)
