"""`denoise-sfu corpus music` on a tiny .deb built here (dpkg-deb): the real unpack, decode,
WAV and manifest code, no network. The corpus-marked test reads the real cache if filled."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from denoiser.corpus import music_packages as mp

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: CC-BY-SA-3.0

Files: debian/*
License: GPL-2+
"""


def _ogg(path: Path, seconds: float, rate: int = 44_100, freq: float = 440.0) -> None:
    """A stereo Ogg/Vorbis file (libsndfile's encoder)."""
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, np.stack([x, x], 1), rate, format="OGG", subtype="VORBIS")


def _deb(tmp: Path, name: str, version: str = "1.0-1") -> Path:
    root = tmp / "src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: test music\n")
    doc = root / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    music = root / "usr/share/games/x/music"
    (music / "band").mkdir(parents=True)
    _ogg(music / "theme.ogg", 3.0)
    _ogg(music / "band" / "guitar.ogg", 2.5, rate=48_000)
    _ogg(music / "jingle.ogg", 0.5)  # too short: not a track
    (music / "broken.ogg").write_bytes(b"OggS" + bytes(200))  # undecodable: skipped, logged
    (root / "usr/share/games/x/sounds").mkdir(parents=True)
    _ogg(root / "usr/share/games/x/sounds/boom.ogg", 3.0)  # not under the music folder
    debs = tmp / "cache" / "debs"
    debs.mkdir(parents=True)
    out = debs / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True,
                   capture_output=True)
    return out


SOURCE = mp.Source("test-music-data", ("usr/share/games/x/music/",), "orchestra", "dev",
                   "CC-BY-SA-3.0", kinds=(("*/guitar.ogg", "solo_guitar"),), min_seconds=1.0)


def test_acquire_unpacks_decodes_and_writes_the_manifest(tmp_path: Path) -> None:
    _deb(tmp_path, SOURCE.package)
    cache = tmp_path / "cache"
    logs: list[str] = []
    m = mp.acquire(cache, offline=True, sources=[SOURCE], log=logs.append)
    rows = {Path(t["member"]).name: t for t in m["tracks"]}  # type: ignore[union-attr]
    assert set(rows) == {"theme.ogg", "guitar.ogg"}  # short, broken and other folders left out
    assert rows["guitar.ogg"]["kind"] == "solo_guitar" and rows["theme.ogg"]["kind"] == "orchestra"
    assert rows["theme.ogg"]["version"] == "1.0-1" and rows["theme.ogg"]["split"] == "dev"
    assert abs(rows["theme.ogg"]["seconds"] - 3.0) < 0.05
    assert rows["guitar.ogg"]["source_rate"] == 48_000
    for t in rows.values():
        for rate, rel in t["wav"].items():
            x, sr = sf.read(cache / rel)
            assert sr == int(rate) and x.ndim == 1  # mono at 16 and 48 kHz
            assert abs(len(x) / sr - t["seconds"]) < 0.05
            assert 0.15 < np.sqrt(np.mean(x**2)) < 0.25  # a 0.3-amplitude sine survives
    info = m["packages"][SOURCE.package]  # type: ignore[index]
    assert info["licences_in_copyright_file"] == ["CC-BY-SA-3.0", "GPL-2+"]
    assert [Path(s).name for s in info["skipped_undecodable"]] == ["broken.ogg"]
    assert any("broken.ogg" in line for line in logs)
    assert (cache / "copyright" / f"{SOURCE.package}.txt").read_text() == COPYRIGHT
    assert json.loads((cache / "manifest.json").read_text()) == m
    # rows with absolute paths for the consumers; the dev split only
    assert {Path(str(t["path48"])).name for t in mp.tracks(cache, "dev")} == {
        "theme.wav", "band_guitar.wav"}
    assert mp.tracks(cache, "train") == []

    # a second run finds the package in the cache and does not extract it again
    logs.clear()
    again = mp.acquire(cache, offline=True, sources=[SOURCE], log=logs.append)
    assert again["tracks"] == m["tracks"] and "already in the cache" in logs[0]
    # ... unless a WAV is gone
    (cache / rows["theme.ogg"]["wav"]["16000"]).unlink()
    logs.clear()
    mp.acquire(cache, offline=True, sources=[SOURCE], log=logs.append)
    assert "2 tracks" in logs[-1] and (cache / rows["theme.ogg"]["wav"]["16000"]).is_file()


def test_bad_requests_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(mp.CorpusError, match="not a music source: nope"):
        mp.acquire(tmp_path, ["nope"], sources=[SOURCE])
    with pytest.raises(mp.CorpusError, match=r"no \.deb .* --offline"):
        mp.acquire(tmp_path, offline=True, sources=[SOURCE])


def test_licences_are_read_from_non_dep5_files_too() -> None:
    text = ("The songs are licenced under the terms of the Creative Commons Attribution "
            "ShareAlike licence 3.0: http://creativecommons.org/licenses/by-sa/3.0 ...")
    assert mp.licences_in(text) == ["CC-BY-SA", "CC-BY-SA-3.0"]
    assert mp.licences_in("released under the GNU General Public License") == ["GPL"]


def test_every_source_is_labelled_and_the_split_holds_out_whole_packages() -> None:
    names = [s.package for s in mp.SOURCES]
    assert len(names) == len(set(names))
    for s in mp.SOURCES:
        assert s.kind in mp.KINDS and s.split in ("train", "dev") and s.licence
        assert all(k in mp.KINDS for _, k in s.kinds)
    dev = {s.kind for s in mp.SOURCES if s.split == "dev"}
    assert {"orchestra", "electronic", "rock_pop", "jazz"} <= dev


@pytest.mark.skipif(mp.load_manifest() is None,
                    reason="music cache not filled (run `denoise-sfu corpus music`)")
def test_the_real_cache_is_consistent() -> None:
    m = mp.load_manifest()
    assert m is not None
    rows = m["tracks"]
    assert sum(float(t["seconds"]) for t in rows) > 3600  # hours, not minutes
    dev = {t["package"] for t in rows if t["split"] == "dev"}
    train = {t["package"] for t in rows if t["split"] == "train"}
    assert dev and train and not dev & train  # disjoint by source
    for t in rows[:: max(1, len(rows) // 20)]:
        assert all((mp.default_cache() / w).is_file() for w in t["wav"].values())
