"""The train/dev split of the shared corpus and the dev-set generator (most tests need the
corpus itself: marked `corpus`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from denoiser.corpus.devset import (
    SNR_BANDS,
    build_devset,
    corpus_files,
    group_of,
    read_clip,
    speakers,
    split_of,
)
from denoiser.paths import SHARED_DATA_DIR


def test_groups_follow_speakers_and_recordings() -> None:
    assert group_of("clean/librispeech_train-clean-100/103-1240-0000.wav") == "librispeech:103"
    assert group_of("clean/speechocean762/SPEAKER0001_000010115.wav") == \
        "speechocean762:SPEAKER0001"
    assert group_of("clean/klettres_48k/de_alpha_a.wav") == "klettres:de"
    # The same voice talent in two languages is one speaker.
    assert group_of("clean/asterisk_en_US_f_Allison/a.wav") == \
        group_of("clean/asterisk_es_MX_f_Allison/b.wav")
    assert group_of("noise/hu_nonspeech100/n1.wav") == "noise:hu_nonspeech100/n1.wav"
    assert group_of("noise/vbd_demand_residual/p287_001.wav") == \
        group_of("noise/vbd_demand_residual/p287_002.wav")


@pytest.mark.corpus
def test_split_is_by_group_and_works_from_any_root(tmp_path: Path) -> None:
    by_group: dict[str, set[str]] = defaultdict(set)
    for top in ("clean", "noise", "music"):
        for f in corpus_files(top):
            by_group[group_of(f)].add(split_of(f))
    assert all(len(splits) == 1 for splits in by_group.values())
    some = corpus_files("clean")[0]
    elsewhere = tmp_path / "copy" / some.relative_to(SHARED_DATA_DIR)
    assert split_of(elsewhere) == split_of(some)
    with pytest.raises(ValueError, match="not a file of the shared corpus"):
        split_of(tmp_path / "x.wav")


@pytest.mark.corpus
def test_dev_split_is_a_fair_share() -> None:
    dev, train = speakers("dev"), speakers("train")
    assert not set(dev) & set(train)
    assert 0.08 < len(dev) / (len(dev) + len(train)) < 0.25
    dev_noise = corpus_files("noise", "dev")
    assert len(dev_noise) >= 10 and len({f.parent for f in dev_noise}) >= 3


@pytest.mark.corpus
def test_devset_clips(tmp_path: Path) -> None:
    folder, clips = build_devset(4, seed=7, cache_dir=tmp_path)
    assert [c.noise_type for c in clips] == ["noise", "babble", "noise", "talker"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [c["id"] for c in manifest["clips"]] == [c.id for c in clips]
    dev_speakers = speakers("dev")
    for clip in clips:
        clean, noisy = read_clip(folder, clip)
        assert clean.shape == noisy.shape and clean.size % 480 == 0
        assert 4.0 <= clean.size / 48_000 <= 6.0
        assert sf.info(str(folder / clip.noisy)).samplerate == 48_000
        noise = noisy - clean
        snr = 10 * np.log10(np.sum(clean.astype(np.float64)**2) / np.sum(noise**2.0))
        assert snr == pytest.approx(clip.snr_db, abs=0.05)
        lo, hi = SNR_BANDS[0]
        assert lo <= clip.snr_db <= hi and clip.snr_band == "0-5dB"
        assert np.max(np.abs(noisy)) <= 0.951
        assert clip.speaker in dev_speakers
        if clip.noise_type == "noise":
            assert all(split_of(s) == "dev" for s in clip.sources)
        else:
            assert clip.speaker not in clip.sources
            assert all(s in dev_speakers for s in clip.sources)
            assert (3 <= len(clip.sources) <= 6) if clip.noise_type == "babble" \
                else len(clip.sources) == 1


@pytest.mark.corpus
def test_devset_is_deterministic_and_prefix_stable(tmp_path: Path) -> None:
    folder_a, small = build_devset(2, seed=3, cache_dir=tmp_path / "a")
    folder_b, large = build_devset(3, seed=3, cache_dir=tmp_path / "b")
    assert large[:2] == small
    for a, b in zip(small, large, strict=False):
        np.testing.assert_array_equal(read_clip(folder_a, a)[1], read_clip(folder_b, b)[1])
    # A second call reuses the cache instead of regenerating.
    mtime = (folder_a / small[0].noisy).stat().st_mtime_ns
    assert build_devset(2, seed=3, cache_dir=tmp_path / "a")[1] == small
    assert (folder_a / small[0].noisy).stat().st_mtime_ns == mtime
    with pytest.raises(ValueError):
        build_devset(0, cache_dir=tmp_path)
