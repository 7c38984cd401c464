"""Real music from Debian's game-soundtrack packages: download, extract, decode, and a manifest.

    denoise-sfu corpus music [--cache DIR] [--packages a,b] [--offline]

The bypass classifier learned music from seven recordings; Debian's archive holds hours of
freely licensed soundtracks. For each package of `SOURCES` this fetches the .deb with
`apt-get download` (the exact candidate version, kept in `DIR/debs` and reused), unpacks it
with `dpkg-deb -x` into a temporary folder, keeps the audio files under the listed folders that
last at least `min_seconds`, decodes each (PyAV) to mono 16-bit WAV at 16 kHz and at 48 kHz,
copies the package's copyright file, and writes `DIR/manifest.json`: one row per track with its
package, version, path inside the package, licence, duration, kind of music and split. The
cache lives outside the repository (`$DENOISE_SFU_CACHE_DIR/music` or
`~/.cache/denoise-sfu/music`); no audio is ever committed.

The split is by package (whole albums / soundtracks held out): `dev` packages are never used for
training, so the music dev set (`denoiser.corpus.music_devset`) is unseen by source.

Kinds are per package, from what the package holds (its description and track names; a few
files are overridden by name), not by listening to every track: `kind_source` in the manifest
says so. Licences were read from each package's copyright file (the `licence` column); the
manifest also keeps the licence names the command itself finds in that file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_SUFFIXES = (".ogg", ".oga", ".mp3", ".flac", ".wav", ".opus")
RATES = (16_000, 48_000)
KINDS: tuple[str, ...] = (
    "solo_piano", "solo_brass", "solo_strings", "solo_guitar", "solo_woodwind", "orchestra",
    "rock_pop", "electronic", "jazz", "vocal", "world", "chiptune",
)
MANIFEST_VERSION = 1
SOLO_MANIFEST = "solo_manifest.json"  # rendered solo phrases (denoiser/corpus/solo_render.py)


class CorpusError(RuntimeError):
    """A package could not be fetched, unpacked or decoded (the message says which and why)."""


@dataclass(frozen=True)
class Source:
    """A Debian package whose audio is music, and how to label it."""

    package: str
    dirs: tuple[str, ...]  # folders inside the package (path prefixes) that hold the tracks
    kind: str  # the package's kind of music (KINDS)
    split: str  # "train" or "dev": dev packages are never trained on
    licence: str  # as read from the package's copyright file
    kinds: tuple[tuple[str, str], ...] = ()  # (fnmatch pattern on the path, kind) overrides
    min_seconds: float = 20.0
    skip: tuple[str, ...] = ()  # fnmatch patterns of files that are not music

    def kind_of(self, member: str) -> str:
        for pattern, kind in self.kinds:
            if fnmatch.fnmatch(member, pattern):
                return kind
        return self.kind


# Checked with `apt-cache show` and each package's /usr/share/doc/<pkg>/copyright (Debian 12).
SOURCES: tuple[Source, ...] = (
    Source("wesnoth-1.16-music", ("usr/share/games/wesnoth/1.16/data/core/music/",),
           "orchestra", "train", "GPL-2+ (Wesnoth music, copyright file)"),
    Source("megaglest-data", ("usr/share/games/megaglest/data/core/menu/music/",
                              "usr/share/games/megaglest/techs/megapack/factions/"),
           "orchestra", "train", "CC-BY-SA-3.0 / GPL-2+ (copyright file)",
           kinds=(("*/indian/*", "world"), ("*/egypt/*", "world"), ("*/persian/*", "world"),
                  ("*/tech/*", "electronic")),
           skip=("*/sounds/*",)),
    Source("openclonk-data", ("usr/share/games/openclonk/Music.ocg/",), "orchestra", "train",
           "CC-BY-3.0 (OpenClonk content, copyright file)"),
    Source("hedgewars-data", ("usr/share/games/hedgewars/Data/Music/",), "world", "train",
           "GPL-2 / CC-BY-SA (copyright file)"),
    Source("warzone2100-music", ("usr/share/games/warzone2100/music/",), "electronic", "train",
           "GPL-2+ / CC-BY-SA (copyright file)"),
    Source("supertux-data", ("usr/share/games/supertux2/music/",), "chiptune", "train",
           "GPL-2+ / CC-BY-SA (copyright file)"),
    Source("xmoto-data", ("usr/share/games/xmoto/Textures/Musics/",), "electronic", "train",
           "GPL-2+ (copyright file)"),
    Source("singularity-music", ("usr/share/games/singularity/music/",), "electronic", "train",
           "CC-BY-SA-3.0 (Max McCracken, copyright file)"),
    Source("fretsonfire-songs-muldjord", ("usr/share/games/fretsonfire/data/songs/",),
           "rock_pop", "train", "CC-BY-SA-3.0 (El Senator, copyright file)",
           kinds=(("*/guitar.ogg", "solo_guitar"),), skip=("*/rhythm.ogg",)),
    Source("frozen-bubble-data", ("usr/share/games/frozen-bubble/snd/",), "rock_pop", "train",
           "GPL-2 (copyright file)"),
    Source("asc-music", ("usr/share/games/asc/music/",), "rock_pop", "train",
           "GPL-2+ (copyright file)"),
    Source("planetblupi-music-ogg", ("usr/share/planetblupi/music/",), "world", "train",
           "GPL-3+ (copyright file)"),
    Source("drascula-music", ("usr/share/scummvm/drascula/audio/",), "jazz", "train",
           "Drascula-License, BSD-like (copyright file)"),
    Source("lincity-ng-data", ("usr/share/games/lincity-ng/music/",), "jazz", "train",
           "GPL-2+ (copyright file)"),
    # held out (dev): whole packages, one per broad kind
    Source("flare-game", ("usr/share/games/flare/mods/fantasycore/music/",), "orchestra", "dev",
           "CC-BY-SA-3.0+ (copyright file)"),
    Source("freedroidrpg-data", ("usr/share/freedroidrpg/data/sound/music/",), "electronic",
           "dev", "GPL-2+ (copyright file)"),
    Source("fretsonfire-songs-sectoid", ("usr/share/games/fretsonfire/data/songs/",),
           "rock_pop", "dev", "GPL (Carlos Pérez, copyright file)",
           kinds=(("*/guitar.ogg", "solo_guitar"),), skip=("*/rhythm.ogg",)),
    Source("hyperrogue-music", ("usr/share/hyperrogue/music/",), "world", "dev",
           "CC-BY-SA-3.0 (copyright file)"),
    Source("extremetuxracer-data", ("usr/share/games/etr/music/",), "jazz", "dev",
           "GPL-2+ (copyright file)"),
)


@dataclass
class Track:
    """One row of the manifest."""

    package: str
    version: str
    member: str  # path inside the package
    licence: str
    seconds: float
    kind: str
    split: str
    wav: dict[str, str] = field(default_factory=dict)  # rate -> path relative to the cache
    kind_source: str = "package"
    source_rate: int = 0


def default_cache() -> Path:
    base = os.environ.get("DENOISE_SFU_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "denoise-sfu") / "music"


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as exc:
        raise CorpusError(f"{args[0]} is not installed (a Debian system is needed)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CorpusError(f"{' '.join(args)} took more than 30 minutes") from exc
    if done.returncode != 0:
        raise CorpusError(f"{' '.join(args)} failed ({done.returncode}): "
                          f"{done.stderr.strip()[-400:]}")
    return done.stdout


def candidate_version(package: str) -> str | None:
    """The version `apt-get download` would fetch, or None where apt does not know it."""
    out = _run(["apt-cache", "policy", package])
    m = re.search(r"Candidate:\s*(\S+)", out)
    return None if m is None or m.group(1) == "(none)" else m.group(1)


def find_deb(package: str, debs: Path) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch(package: str, debs: Path, offline: bool = False) -> Path:
    """The package's .deb in `debs`, downloaded with `apt-get download` unless already there."""
    debs.mkdir(parents=True, exist_ok=True)
    have = find_deb(package, debs)
    if have is not None:
        return have
    if offline:
        raise CorpusError(f"{package}: no .deb in {debs} and --offline given")
    if candidate_version(package) is None:
        raise CorpusError(f"{package}: apt does not know it (run `apt-get update`?)")
    _run(["apt-get", "download", package], cwd=debs)
    have = find_deb(package, debs)
    if have is None:
        raise CorpusError(f"{package}: apt-get download left no .deb in {debs}")
    return have


def deb_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name]).strip()


def licences_in(copyright_text: str) -> list[str]:
    """Licence names stated in a copyright file: DEP-5 `License:` fields, else well-known
    licence names found in the text."""
    names = {m.strip() for m in re.findall(r"^License:[ \t]*(\S[^\n]*)$", copyright_text,
                                           re.MULTILINE)}
    if not names:
        for pattern, name in ((r"Creative Commons Attribut\w* Share-?Alike", "CC-BY-SA"),
                              (r"creativecommons\.org/licenses/by-sa/([\d.]+)", "CC-BY-SA-{}"),
                              (r"GNU General Public License|\bGPL\b", "GPL"),
                              (r"public domain", "public-domain"),
                              (r"CREATIVE COMMONS PUBLIC LICENSE", "CC")):
            m = re.search(pattern, copyright_text, re.IGNORECASE)
            if m:
                names.add(name.format(*m.groups()))
    return sorted(names)


def audio_members(root: Path, source: Source) -> list[str]:
    """Audio files under the source's folders in an unpacked package, as package paths."""
    out = []
    for d in source.dirs:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if (p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                    and not any(fnmatch.fnmatch(rel, s) for s in source.skip)):
                out.append(rel)
    return out


def decode(path: Path, rates: Iterable[int] = RATES) -> tuple[dict[int, np.ndarray], int]:
    """Decode an audio file to mono float32 at each rate (one pass, PyAV's resampler)."""
    import av

    rates = tuple(rates)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            src_rate = int(stream.rate or 0)
            # planar float at the source's channel layout, then the mean of the channels
            # (a mono downmix by the resampler would sum them at -3 dB each: +3 dB and clips)
            layout = stream.layout.name if stream.layout is not None else "mono"
            rs = {r: av.AudioResampler(format="fltp", layout=layout, rate=r) for r in rates}
            parts: dict[int, list[np.ndarray]] = {r: [] for r in rates}
            for frame in container.decode(stream):
                for r, res in rs.items():
                    parts[r] += [f.to_ndarray().mean(0) for f in res.resample(frame)]
            for r, res in rs.items():
                parts[r] += [f.to_ndarray().mean(0) for f in res.resample(None)]
    except (av.FFmpegError, IndexError) as exc:
        raise CorpusError(f"{path.name}: cannot decode ({exc})") from exc
    out = {r: (np.concatenate(p) if p else np.zeros(0, np.float32)).astype(np.float32)
           for r, p in parts.items()}
    return out, src_rate


def _safe_name(member: str, source: Source) -> str:
    rel = member
    for d in source.dirs:
        if member.startswith(d):
            rel = member[len(d):]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.rsplit(".", 1)[0]).strip("_")
    return stem or hashlib.sha1(member.encode()).hexdigest()[:12]


def extract_source(source: Source, deb: Path, cache: Path,
                   log: Callable[[str], None] = print) -> tuple[list[Track], dict[str, Any]]:
    """Unpack one package, decode its music to WAVs in the cache, return its manifest rows."""
    import soundfile as sf

    version = deb_field(deb, "Version")
    with tempfile.TemporaryDirectory(prefix="music-deb-") as tmp:
        root = Path(tmp)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        copyright_file = root / "usr/share/doc" / source.package / "copyright"
        text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
        docs = cache / "copyright"
        docs.mkdir(parents=True, exist_ok=True)
        if text:
            (docs / f"{source.package}.txt").write_text(text)
        members = audio_members(root, source)
        if not members:
            raise CorpusError(f"{source.package} {version}: no audio under {source.dirs}")
        tracks, skipped = [], []
        for member in members:
            try:
                audio, src_rate = decode(root / member)
            except CorpusError as exc:  # one broken file does not lose the package
                log(f"{source.package}: skipped {member}: {exc}")
                skipped.append(member)
                continue
            seconds = len(audio[RATES[0]]) / RATES[0]
            if seconds < source.min_seconds:
                continue
            name = _safe_name(member, source)
            wavs = {}
            for r, x in audio.items():
                out = cache / f"wav{r // 1000}k" / source.package / f"{name}.wav"
                out.parent.mkdir(parents=True, exist_ok=True)
                peak = float(np.max(np.abs(x))) if len(x) else 0.0
                sf.write(out, x / peak * 0.99 if peak > 1.0 else x, r, subtype="PCM_16")
                wavs[str(r)] = out.relative_to(cache).as_posix()
            tracks.append(Track(source.package, version, member, source.licence,
                                round(seconds, 2), source.kind_of(member), source.split, wavs,
                                "package" if source.kind_of(member) == source.kind
                                else "file name", src_rate))
        log(f"{source.package} {version}: {len(tracks)} tracks, "
            f"{sum(t.seconds for t in tracks) / 60:.1f} min")
    info: dict[str, Any] = {
        "version": version, "licence": source.licence, "split": source.split,
        "licences_in_copyright_file": licences_in(text),
        "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "tracks": len(tracks), "skipped_undecodable": skipped,
    }
    return tracks, info


def load_manifest(cache: Path | None = None) -> dict[str, Any] | None:
    """The manifest of a music cache, or None where the command has not been run there."""
    path = (cache or default_cache()) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def tracks(cache: Path | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Manifest rows (of one split; the packages' and the rendered solo phrases'), each with
    `path16` / `path48`: absolute WAV paths."""
    cache = cache or default_cache()
    m = load_manifest(cache)
    solo = cache / SOLO_MANIFEST
    found = ([] if m is None else list(m["tracks"])) + (
        json.loads(solo.read_text())["tracks"] if solo.is_file() else [])
    rows = []
    for t in found:
        if split is None or t["split"] == split:
            rows.append({**t, "path16": cache / t["wav"]["16000"],
                         "path48": cache / t["wav"]["48000"]})
    return rows


def write_manifest(cache: Path, rows: list[dict[str, Any]], infos: dict[str, Any],
                   seconds: float) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "about": "real music from Debian packages, by denoiser/corpus/music_packages.py",
        "rates": list(RATES), "packages": infos,
        "tracks": sorted(rows, key=lambda t: (str(t["package"]), str(t["member"]))),
        "minutes": {s: round(sum(float(t["seconds"]) for t in rows
                                 if t["split"] == s) / 60, 1) for s in ("train", "dev")},
        "seconds_to_build": round(seconds, 1),
    }
    tmp = cache / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(cache / "manifest.json")
    return manifest


def acquire(cache: Path, packages: Iterable[str] | None = None, offline: bool = False,
            sources: Iterable[Source] = SOURCES, log: Callable[[str], None] = print,
            force: bool = False) -> dict[str, Any]:
    """Fetch and extract every source (or the named ones); write and return the manifest.

    The manifest is written after each package; a package already in it (same .deb, its
    WAVs present) is not extracted again unless `force`, so an interrupted run resumes. Rows of
    packages not named this time are kept, so the cache can be filled one package at a time."""
    sources = list(sources)
    wanted = set(packages) if packages is not None else {s.package for s in sources}
    unknown = wanted - {s.package for s in sources}
    if unknown:
        raise CorpusError(f"not a music source: {', '.join(sorted(unknown))} "
                          f"(choose among {', '.join(s.package for s in sources)})")
    cache.mkdir(parents=True, exist_ok=True)
    old = load_manifest(cache) or {"tracks": [], "packages": {}}
    rows = [t for t in old["tracks"] if t["package"] not in wanted]
    infos = {k: v for k, v in old["packages"].items()
             if k not in wanted}
    t0 = time.monotonic()
    old_rows: dict[str, list[dict[str, Any]]] = {str(t["package"]): [] for t in old["tracks"]}
    for t in old["tracks"]:
        old_rows[str(t["package"])].append(t)
    manifest: dict[str, Any] = {}
    for source in sources:
        if source.package not in wanted:
            continue
        deb = fetch(source.package, cache / "debs", offline)
        prev = old["packages"].get(source.package)
        kept = old_rows.get(source.package, [])
        if (not force and isinstance(prev, dict) and prev.get("deb") == deb.name and kept
                and all((cache / str(w)).is_file() for t in kept
                        for w in t["wav"].values())):
            rows += kept
            infos[source.package] = prev
            log(f"{source.package}: {len(kept)} tracks already in the cache")
        else:
            for d in ("wav16k", "wav48k"):
                shutil.rmtree(cache / d / source.package, ignore_errors=True)
            found, info = extract_source(source, deb, cache, log)
            rows += [asdict(t) for t in found]
            infos[source.package] = info
        manifest = write_manifest(cache, rows, infos, time.monotonic() - t0)
    return manifest or write_manifest(cache, rows, infos, time.monotonic() - t0)
