"""The reference screen: which "clean" recordings are clean enough to score a denoiser against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from denoiser.corpus import devset
from denoiser.corpus.devset import build_devset, corpus_files, group_of, read_clip
from denoiser.corpus.screen import (
    MIN_REFERENCE_BAK,
    _key,
    _shipped,
    passing,
    recording_bak,
    scores,
)

STUDIO = "clean/librispeech_train-clean-100"


@pytest.mark.corpus
def test_shipped_table_covers_the_corpus_and_matches_a_fresh_score() -> None:
    files = corpus_files("clean")
    table = _shipped()
    assert {_key(f) for f in files} <= set(table)
    # The table is what the scorer gives now (one studio and one speechocean recording).
    for folder in (STUDIO, "clean/speechocean762"):
        f = next(p for p in files if _key(p).startswith(folder + "/"))
        assert recording_bak(f) == pytest.approx(table[_key(f)], abs=1e-3)


@pytest.mark.corpus
def test_screen_rejects_a_studio_recording_once_noise_is_added(tmp_path: Path) -> None:
    studio = next(f for f in corpus_files("clean") if _key(f).startswith(STUDIO + "/"))
    speech, rate = sf.read(str(studio), dtype="float32")
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(speech.shape[0]).astype(np.float32)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2)) / 10 ** (15 / 20)  # 15 dB SNR
    noisy = tmp_path / "noisy.wav"
    sf.write(noisy, speech + noise, rate)
    got = scores([studio, noisy])
    assert got[studio] is not None and got[studio] >= MIN_REFERENCE_BAK
    assert got[noisy] is not None and got[noisy] < MIN_REFERENCE_BAK - 0.5
    assert passing([studio, noisy]) == [studio]


def test_files_outside_the_corpus_are_scored_once_and_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENOISE_SFU_CACHE_DIR", str(tmp_path / "cache"))
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(4000, np.float32), 16000)  # 0.25 s: too short to judge
    assert scores([short]) == {short: None}
    assert passing([short]) == []
    cached = json.loads((tmp_path / "cache" / "devset" / "reference_bak.json").read_text())
    assert cached == {_key(short): None}


@pytest.mark.corpus
def test_dev_set_v2_draws_wanted_speech_only_from_screened_recordings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Path] = []
    real_load = devset.load_48k

    def recording_load(path: Path) -> np.ndarray:  # the real loader, noting what it read
        loaded.append(path)
        return real_load(path)

    monkeypatch.setattr(devset, "load_48k", recording_load)
    dev, noises = devset.speakers("dev"), corpus_files("noise", "dev")
    references = devset.screened_speakers(dev, MIN_REFERENCE_BAK)
    assert 8 <= len(references) < len(dev)
    table = _shipped()
    for index in range(12):  # every interferer type and SNR band
        loaded.clear()
        _clean, _noisy, info = devset.make_clip(5, index, dev, noises, references)
        wanted = [f for f in loaded if group_of(f) == info["speaker"]]
        assert wanted, info
        # Competing talkers are other speakers and may be unscreened; the wanted one may not.
        assert all(table[_key(f)] >= MIN_REFERENCE_BAK for f in wanted), \
            [(f.name, table[_key(f)]) for f in wanted]


@pytest.mark.corpus
def test_dev_set_versions_live_in_their_own_folders(tmp_path: Path) -> None:
    folder, _clips = build_devset(2, seed=0, cache_dir=tmp_path)
    assert folder.name == "v2-bak3.5-seed0"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 2 and "BAK >= 3.5" in manifest["reference_screen"]
    v1_folder, v1 = build_devset(2, seed=0, cache_dir=tmp_path, min_reference_bak=None)
    assert v1_folder.name == "v1-seed0"
    assert json.loads((v1_folder / "manifest.json").read_text())["version"] == 1
    # Without the screen, the clips are version 1's as first built (figures of that build).
    first = read_clip(v1_folder, v1[1])
    assert (v1[1].speaker, v1[1].snr_db, first[1].size) == ("librispeech:5652", 4.449, 245280)
    assert v1[1].sources[:2] == ("librispeech:4640", "asterisk:June")
    rms = [float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) for x in first]
    assert rms == pytest.approx([0.03383043564887094, 0.039345978746411124], rel=1e-5)


@pytest.mark.corpus
def test_training_can_leave_out_targets_with_room_noise() -> None:
    from denoiser.paths import SHARED_DATA_DIR
    from denoiser.training.data import scan

    table = _shipped()
    everything = scan(SHARED_DATA_DIR, part="train").speech
    screened = scan(SHARED_DATA_DIR, part="train", min_speech_bak=MIN_REFERENCE_BAK).speech
    assert 0.6 * len(everything) < len(screened) < len(everything)
    assert all(table[_key(f.path)] >= MIN_REFERENCE_BAK for f in screened)
    dropped = {f.path for f in everything} - {f.path for f in screened}
    assert all((table[_key(p)] or 0) < MIN_REFERENCE_BAK for p in dropped)
