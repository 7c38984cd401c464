"""The training mixer and augmentations, measured on the real shared corpus."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

from denoiser.corpus.devset import split_of
from denoiser.paths import SHARED_DATA_DIR
from denoiser.training import augment as aug
from denoiser.training import data

pytestmark = pytest.mark.corpus


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    return 10 * np.log10(aug.power(speech) / aug.power(noise))


@pytest.fixture(scope="module")
def corpus() -> data.Corpus:
    return data.scan(SHARED_DATA_DIR)


def speech_48k(corpus: data.Corpus, seconds: float = 2.0) -> np.ndarray:
    fullband = [f for f in corpus.speech if f.sample_rate == 48_000 and f.seconds >= seconds]
    return data.read_48k(fullband[0], seconds, np.random.default_rng(0))


def test_split_keeps_dev_files_out(corpus: data.Corpus) -> None:
    listed = corpus.speech + corpus.noise + corpus.rirs
    assert listed and all(split_of(f.path) == "train" for f in listed)
    every = list((SHARED_DATA_DIR / "clean").rglob("*.wav")) + list(
        (SHARED_DATA_DIR / "noise").rglob("*.wav"))
    dev = {p for p in every if split_of(p) == "dev"}
    assert dev, "the split puts nothing in dev: the filter is untested"
    assert not dev & {f.path for f in listed}
    validation = data.scan(SHARED_DATA_DIR, part="validation")
    assert validation.speech
    assert not {f.path for f in validation.speech} & {f.path for f in corpus.speech}
    assert all(split_of(f.path) == "train" for f in validation.speech)
    # The mixer draws its speech only from those files.
    mixer = data.Mixer(corpus, data.MixConfig(seconds=0.5, augment=aug.AugmentConfig.none()))
    rng = np.random.default_rng(3)
    names = {f.path.name for f in corpus.speech}
    assert all(mixer.draw(rng).meta["speech"] in names for _ in range(10))


@pytest.mark.parametrize("target", [-5.0, 0.0, 7.5, 20.0])
def test_mix_at_snr_measures_what_it_says(corpus: data.Corpus, target: float) -> None:
    rng = np.random.default_rng(1)
    speech = speech_48k(corpus)
    noise = data.loop_to_length(data.read_48k(corpus.noise[5], 2.0, rng), len(speech), rng)
    noisy, scaled = data.mix_at_snr(speech, noise, target)
    assert snr_db(speech, noisy - speech) == pytest.approx(target, abs=0.01)
    assert snr_db(speech, scaled) == pytest.approx(target, abs=0.01)


def test_mixer_output_snr_and_level(corpus: data.Corpus) -> None:
    """Without codec/reverb/clipping, noisy - clean is the noise at the drawn SNR."""
    cfg = data.MixConfig(seconds=1.0, augment=aug.AugmentConfig.none())
    mixer = data.Mixer(corpus, cfg)
    rng = np.random.default_rng(7)
    snrs = []
    for _ in range(12):
        ex = mixer.draw(rng)
        assert ex.noisy.shape == ex.clean.shape == (48_000,)
        measured = snr_db(ex.clean, ex.noisy - ex.clean)
        assert measured == pytest.approx(ex.snr_db, abs=0.05)
        assert cfg.snr_db[0] <= ex.snr_db <= cfg.snr_db[1]
        assert np.max(np.abs(ex.noisy)) <= 0.99 + 1e-6
        level = 10 * np.log10(aug.power(ex.noisy))
        assert level <= cfg.level_dbfs[1] + 1e-3
        snrs.append(ex.snr_db)
    assert np.ptp(snrs) > 5  # really drawn, not a constant


def test_band_limited_speech_gets_band_limited_noise(corpus: data.Corpus) -> None:
    wideband = dataclasses.replace(corpus, speech=[f for f in corpus.speech
                                                   if f.sample_rate == 16_000])
    cfg = data.MixConfig(seconds=1.0, p_synthetic_noise=1.0, augment=aug.AugmentConfig.none())
    ex = data.Mixer(wideband, cfg).draw(np.random.default_rng(2))
    assert ex.band_hz == 8_000
    spec = np.abs(np.fft.rfft(ex.noisy)) ** 2
    freqs = np.fft.rfftfreq(len(ex.noisy), 1 / 48_000)
    high = spec[freqs > 9_000].sum() / spec.sum()
    assert high < 1e-4
    # Fullband speech keeps fullband (synthetic) noise.
    fullband = dataclasses.replace(corpus, speech=[f for f in corpus.speech
                                                   if f.sample_rate == 48_000])
    ex = data.Mixer(fullband, cfg).draw(np.random.default_rng(2))
    spec = np.abs(np.fft.rfft(ex.noisy)) ** 2
    assert spec[freqs > 9_000].sum() / spec.sum() > 1e-3


def lag_of(a: np.ndarray, b: np.ndarray, max_lag: int = 2000) -> int:
    """Lag (samples) by which `b` trails `a`, by cross-correlation."""
    corr = np.correlate(b, a[max_lag:-max_lag], mode="valid")
    return int(np.argmax(corr)) - max_lag


@pytest.mark.parametrize("bitrate", [12_000, 32_000, 64_000])
def test_opus_round_trip_keeps_length_and_alignment(corpus: data.Corpus, bitrate: int) -> None:
    x = speech_48k(corpus) * 0.5
    y = aug.opus_round_trip(x, bitrate)
    assert y.shape == x.shape and y.dtype == np.float32
    # SILK (used at 12 kb/s) resamples internally: its group delay is not a whole sample.
    assert abs(lag_of(x, y)) <= (1 if bitrate < 16_000 else 0)
    # It really went through the codec: close to the input, but not equal.
    err = snr_db(x, y - x)
    assert 1.0 < err < 60.0


def test_opus_packet_loss_concealment(corpus: data.Corpus) -> None:
    x = speech_48k(corpus) * 0.5
    lost = {10, 11, 40}
    skip = aug.opus_preskip()
    zeroed = aug.opus_round_trip(x, 32_000, lost, "zero")
    repeated = aug.opus_round_trip(x, 32_000, lost, "repeat")
    assert zeroed.shape == repeated.shape == x.shape
    for k in lost:
        span = slice(k * 960 - skip, (k + 1) * 960 - skip)
        assert np.all(zeroed[span] == 0)
        assert np.abs(repeated[span]).max() > 0
    np.testing.assert_array_equal(repeated[10 * 960 - skip:11 * 960 - skip],
                                  repeated[9 * 960 - skip:10 * 960 - skip])
    received = slice(20 * 960, 30 * 960)
    assert np.abs(zeroed[received]).max() > 0
    assert lag_of(x, zeroed) == 0


def test_reverb_target_is_aligned_early_reverb(corpus: data.Corpus) -> None:
    x = speech_48k(corpus)
    rir_file = corpus.rirs[0] if corpus.rirs else None
    rirs = [aug.synthetic_rir(np.random.default_rng(0), rt60=0.6)]
    if rir_file is not None:
        rirs.append(aug.resample(sf.read(str(rir_file.path), dtype="float32")[0],
                                 rir_file.sample_rate))
    for i, rir in enumerate(rirs):
        wet, early = aug.reverberate(x, rir)
        assert wet.shape == early.shape == x.shape
        assert lag_of(early, wet) == 0  # input and target stay aligned with each other
        if i == 0:  # a synthetic RIR's direct path dominates: no delay against the dry input
            assert lag_of(x, early) == 0
        # Late reverberation is in the input, not in the target.
        assert aug.power(wet - early) > 0.01 * aug.power(early)


def test_augmentations_change_the_input_not_the_length(corpus: data.Corpus) -> None:
    rng = np.random.default_rng(4)
    x = speech_48k(corpus, 1.0)
    for y in (aug.random_eq(x, rng), aug.clip(x, rng), aug.coloured_noise(len(x), rng)):
        assert y.shape == x.shape and np.isfinite(y).all()
        assert not np.allclose(y, x)
    clipped = aug.clip(x, rng)
    assert np.abs(clipped).max() < np.abs(x).max()
    lost = aug.draw_losses(48_000, np.random.default_rng(0), 0.2)
    assert 0 < len(lost) < 51


def test_full_augmentation_example_is_finite(corpus: data.Corpus) -> None:
    cfg = data.MixConfig(seconds=1.0, augment=aug.AugmentConfig(
        p_speech_eq=1, p_noise_eq=1, p_reverb=1, p_opus=1, p_packet_loss=1, p_clip=1))
    ex = data.Mixer(corpus, cfg).draw(np.random.default_rng(5))
    assert ex.noisy.shape == ex.clean.shape == (48_000,)
    assert np.isfinite(ex.noisy).all() and np.isfinite(ex.clean).all()
    assert {"reverb", "opus_bitrate", "lost_packets", "clipped"} <= set(ex.meta)


def test_bad_input_is_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        data.scan(tmp_path / "missing")
    (tmp_path / "clean").mkdir()
    with pytest.raises(ValueError, match="no speech"):
        data.scan(tmp_path)
    with pytest.raises(ValueError):
        data.mix_at_snr(np.zeros(10, np.float32), np.ones(10, np.float32), 0.0)


def test_a_pause_leaves_the_noise_alone_for_its_length(corpus: data.Corpus) -> None:
    """With `p_pause`, the target is silent over one span of the drawn length while the noisy
    input still carries the noise there; at least `min_speech_seconds` of speech remains."""
    cfg = data.MixConfig(seconds=3.0, p_pause=1.0, augment=aug.AugmentConfig.none())
    mixer = data.Mixer(corpus, cfg)
    rng = np.random.default_rng(11)
    hop = 480
    lengths = []
    for _ in range(6):
        ex = mixer.draw(rng)
        pause = float(ex.meta["pause_s"])
        frames = ex.clean[: len(ex.clean) // hop * hop].reshape(-1, hop)
        silent = np.abs(frames).max(axis=1) == 0.0
        # The longest run of silent 10 ms frames covers the pause (less its two 10 ms fades,
        # plus a frame either side it may straddle) and can only be longer by joined gaps.
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, silent.astype(int), 0])))[::2]
        assert runs.max() >= round(pause * 100) - 4
        assert cfg.pause_seconds[0] <= pause <= cfg.pause_seconds[1] + 1e-9
        assert pause <= cfg.seconds - cfg.min_speech_seconds + 1e-9
        noise_there = ex.noisy - ex.clean
        assert aug.power(noise_there[:len(silent) * hop].reshape(-1, hop)[silent]) > 0
        assert snr_db(ex.clean, ex.noisy - ex.clean) == pytest.approx(ex.snr_db, abs=0.05)
        lengths.append(pause)
    assert np.ptp(lengths) > 0.3  # drawn, not a constant


def test_no_pause_share_draws_the_same_data_as_before(corpus: data.Corpus) -> None:
    """`p_pause=0` takes nothing from the random stream: a run's data (and a resumed run's
    replay) does not change with the option's arrival."""
    base = data.Mixer(corpus, data.MixConfig(seconds=1.0)).draw(np.random.default_rng(3))
    again = data.Mixer(corpus, data.MixConfig(seconds=1.0, p_pause=0.0)).draw(
        np.random.default_rng(3))
    paused = data.Mixer(corpus, data.MixConfig(seconds=1.0, p_pause=1.0)).draw(
        np.random.default_rng(3))
    assert np.array_equal(base.noisy, again.noisy) and "pause_s" not in base.meta
    assert not np.array_equal(base.clean, paused.clean)


def test_a_competing_talker_sits_its_drawn_level_under_the_wanted_voice(
        corpus: data.Corpus) -> None:
    """With `p_talker`, another speaker is added to the noisy input only, `talker_db` (12-24 dB)
    under the wanted voice; the target is the wanted voice alone, and `p_talker=0` takes nothing
    from the random stream."""
    cfg = data.MixConfig(seconds=2.0, p_talker=1.0, augment=aug.AugmentConfig.none())
    mixer = data.Mixer(corpus, cfg)
    rng = np.random.default_rng(5)
    levels = []
    for _ in range(4):
        plain_rng = np.random.default_rng(rng.integers(1 << 30))
        state = plain_rng.bit_generator.state
        ex = mixer.draw(plain_rng)
        below = float(ex.meta["talker_db"])
        assert cfg.talker_db[0] <= below <= cfg.talker_db[1]
        assert ex.meta["talker"] != ex.meta["speech"]
        # the same draw without the talker: what differs is the talker, at its level
        plain_rng.bit_generator.state = state
        without = data.Mixer(corpus, dataclasses.replace(cfg, p_talker=0.0)).draw(plain_rng)
        assert np.array_equal(ex.speech, without.speech)
        gain = 10 ** (float(ex.meta["gain_db"]) / 20)
        np.testing.assert_allclose(ex.clean, ex.speech * gain, atol=1e-6)  # no talker in it
        talker = ex.noise - without.noise
        assert aug.power(talker) > 0
        assert snr_db(ex.speech, talker) == pytest.approx(below, abs=0.05)
        levels.append(below)
    assert np.ptp(levels) > 1.0
    base = data.Mixer(corpus, data.MixConfig(seconds=1.0)).draw(np.random.default_rng(3))
    again = data.Mixer(corpus, data.MixConfig(seconds=1.0, p_talker=0.0)).draw(
        np.random.default_rng(3))
    assert np.array_equal(base.noisy, again.noisy) and "talker" not in base.meta
