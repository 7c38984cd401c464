"""The train/dev split of the shared corpus and the development set built from its dev half.

Split rule (fixed; training must use `split_of` to exclude dev material):
every file of ../shared/data belongs to a GROUP that must never straddle the split, and a group
is "dev" when the first 8 hex digits of SHA-1("denoise-sfu-split-v1:" + group), read as an
integer, modulo 100 fall below `DEV_PERCENT`. Groups:

- speech: the SPEAKER. LibriSpeech `SSSS-CCCC-UUUU` -> `librispeech:SSSS`; speechocean762
  `SPEAKERnnnn_...` -> `speechocean762:SPEAKERnnnn`; KLettres `<lang>_...` -> `klettres:<lang>`
  (one voice per language); Asterisk `asterisk_<lang>_<CC>_<g>_<Name>` -> `asterisk:<Name>`
  (Allison records both en_US and es_MX); every other clean folder (one voice, or a handful
  of speakers we cannot tell apart by name) is one group: `clean:<folder>`.
- noise and music: the RECORDING (`noise:<folder>/<file>`), except `vbd_demand_residual`, whose
  residuals may cut the same DEMAND recordings, so the folder is one group.
- the room impulse response: its file.

The dev set: clip `i` of seed `s` is drawn from its own generator seeded with (s, i), so the
first clips of a large set equal a small set with the same seed. Each clip is 4-6 s at 48 kHz:
utterances of one dev speaker chained (0.2-0.5 s gaps) and cut to length, scaled to -30..-20 dBFS
RMS, mixed with an interferer at an SNR (whole-clip RMS ratio) drawn uniformly within a band.
A `noise` interferer is one dev recording, its folder (kind of noise) drawn uniformly first.
Bands 0-5, 5-10 and 10-15 dB and interferer types `noise` (one dev noise recording), `babble`
(3-6 other dev speakers summed at equal level) and `talker` (one other dev speaker) are
stratified: clip i gets type TYPES[i % 4] (noise twice as often) and band (i // 4) % 3.
Sources shorter than the clip are looped from a random start.

Version 2 (the default) draws the wanted speaker's utterances only from recordings that pass the
reference screen (`denoiser.corpus.screen`: DNSMOS BAK >= 3.5), because a "clean" reference
that carries room noise scores a denoiser down for removing it; interfering talkers still come
from every dev recording. Version 1 (no screen) stays reproducible: `min_reference_bak=None`.

Most sources are 16 kHz and are upsampled x3 (polyphase) to 48 kHz: their "clean" reference
then holds nothing above 8 kHz, so a model that leaves or invents energy there loses SI-SDR but
not PESQ-WB/STOI/DNSMOS, which all look at <= 8 kHz.

Clips are cached as float WAVs with a `manifest.json` under `default_cache_dir()`
(`$DENOISE_SFU_CACHE_DIR/devset` or `~/.cache/denoise-sfu/devset`), never in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from denoiser.corpus.screen import MIN_REFERENCE_BAK
from denoiser.paths import SHARED_DATA_DIR

SAMPLE_RATE = 48_000
DEV_PERCENT = 15
SPLIT_SALT = "denoise-sfu-split-v1:"
DEVSET_VERSION = 2
TYPES: tuple[str, ...] = ("noise", "babble", "noise", "talker")
SNR_BANDS: tuple[tuple[float, float], ...] = ((0.0, 5.0), (5.0, 10.0), (10.0, 15.0))
_TOP_DIRS = ("clean", "noise", "music", "rir")

Split = Literal["train", "dev"]


def corpus_relative(path: str | os.PathLike[str]) -> Path:
    """`path` relative to the corpus root, e.g. `clean/librispeech_train-clean-100/x.wav`."""
    p = Path(path)
    try:
        return p.resolve().relative_to(SHARED_DATA_DIR.resolve())
    except ValueError:
        pass
    parts = p.parts
    for i, part in enumerate(parts):
        if part in _TOP_DIRS and len(parts) - i >= 3:
            return Path(*parts[i:])
    raise ValueError(f"{path} is not a file of the shared corpus (expected "
                     f"<{'|'.join(_TOP_DIRS)}>/<folder>/<file> under {SHARED_DATA_DIR})")


def group_of(path: str | os.PathLike[str]) -> str:
    """The split group of a corpus file: its speaker, or its noise/music recording."""
    rel = corpus_relative(path)
    top, folder, stem = rel.parts[0], rel.parts[1], Path(rel.parts[-1]).stem
    if top == "clean":
        if folder.startswith("librispeech"):
            return f"librispeech:{stem.split('-')[0]}"
        if folder == "speechocean762":
            return f"speechocean762:{stem.split('_')[0]}"
        if folder.startswith("klettres"):
            return f"klettres:{stem.split('_')[0]}"
        if folder.startswith("asterisk_"):  # asterisk_<lang>_<CC>_<f|m>_<name>: the same
            return f"asterisk:{folder.split('_')[-1]}"  # talent records several languages
        return f"clean:{folder}"
    if top == "noise" and folder == "vbd_demand_residual":
        return f"noise:{folder}"
    # A compressed copy (x.flac, x.ogg) of a corpus file belongs to the same group as x.wav.
    return f"{top}:{folder}/{stem}.wav"


def split_of(path: str | os.PathLike[str]) -> Split:
    """`"dev"` or `"train"` for a corpus file, by the fixed rule in the module docstring."""
    digest = hashlib.sha1((SPLIT_SALT + group_of(path)).encode()).hexdigest()
    return "dev" if int(digest[:8], 16) % 100 < DEV_PERCENT else "train"


def corpus_files(top: str, split: Split | None = None,
                 root: Path | None = None) -> list[Path]:
    """Sorted WAVs under `<root>/<top>/` (clean, noise, music, rir), optionally of one split."""
    base = (root or SHARED_DATA_DIR) / top
    if not base.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {base} (set DENOISE_SFU_DATA_DIR)")
    files = sorted(base.glob("*/*.wav"))
    return [f for f in files if split is None or split_of(f) == split]


def speakers(split: Split) -> dict[str, list[Path]]:
    """Speech files of one split grouped by speaker."""
    out: dict[str, list[Path]] = {}
    for f in corpus_files("clean", split):
        out.setdefault(group_of(f), []).append(f)
    return out


@cache
def load_48k(path: Path) -> np.ndarray:
    """A corpus WAV as float32 mono at 48 kHz (16 kHz sources upsampled x3, polyphase)."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio


@dataclass(frozen=True)
class Clip:
    """One dev clip: file names are relative to the manifest's folder."""

    id: str
    clean: str
    noisy: str
    snr_db: float
    snr_band: str
    noise_type: str
    speaker: str
    sources: tuple[str, ...]
    duration_s: float
    sample_rate: int = SAMPLE_RATE


def band_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}dB"


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _speech_of(rng: np.random.Generator, files: list[Path], length: int) -> np.ndarray:
    """Utterances of one speaker chained with short gaps, from a random one, cut to `length`."""
    order = rng.permutation(len(files))
    pieces, total, k = [], 0, 0
    while total < length:
        utt = load_48k(files[order[k % len(files)]])
        gap = np.zeros(int(rng.uniform(0.2, 0.5) * SAMPLE_RATE), dtype=np.float32)
        pieces += [utt, gap]
        total += utt.shape[0] + gap.shape[0]
        k += 1
    return np.concatenate(pieces)[:length]


def _loop(rng: np.random.Generator, audio: np.ndarray, length: int) -> np.ndarray:
    """`length` samples of `audio` looped, from a random start."""
    start = int(rng.integers(0, audio.shape[0]))
    reps = -(-(start + length) // audio.shape[0])
    return np.tile(audio, reps)[start:start + length]


def make_clip(seed: int, index: int, dev_speakers: dict[str, list[Path]],
              dev_noises: list[Path], references: dict[str, list[Path]] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Clean and noisy audio of clip `index` and its description (deterministic).

    The wanted speaker and its utterances come from `references` (default: `dev_speakers`),
    competing talkers from `dev_speakers`.
    """
    references = dev_speakers if references is None else references
    rng = np.random.default_rng([seed, index])
    noise_type = TYPES[index % len(TYPES)]
    lo, hi = SNR_BANDS[(index // len(TYPES)) % len(SNR_BANDS)]
    snr = float(rng.uniform(lo, hi))
    length = int(rng.uniform(4.0, 6.0) * SAMPLE_RATE) // 480 * 480
    names = sorted(references)
    speaker = names[int(rng.integers(len(names)))]
    clean = _speech_of(rng, references[speaker], length)
    clean *= 10 ** (rng.uniform(-30.0, -20.0) / 20) / _rms(clean)
    others = [n for n in sorted(dev_speakers) if n != speaker]
    if noise_type == "noise":
        folders = sorted({p.parent for p in dev_noises})
        folder = folders[int(rng.integers(len(folders)))]
        pool = [p for p in dev_noises if p.parent == folder]
        picked = [pool[int(rng.integers(len(pool)))]]
        interferer = _loop(rng, load_48k(picked[0]), length)
        sources = [str(corpus_relative(p)) for p in picked]
    else:
        count = int(rng.integers(3, 7)) if noise_type == "babble" else 1
        voices = [others[j] for j in rng.choice(len(others), size=count, replace=False)]
        interferer = np.zeros(length, dtype=np.float32)
        for voice in voices:
            v = _speech_of(rng, dev_speakers[voice], length)
            interferer += v / _rms(v)
        sources = voices
    interferer *= _rms(clean) / _rms(interferer) / 10 ** (snr / 20)
    noisy = clean + interferer
    peak = float(np.max(np.abs(noisy)))
    if peak > 0.95:  # keep headroom; the same gain on both keeps the SNR
        clean *= 0.95 / peak
        noisy *= 0.95 / peak
    info: dict[str, object] = {
        "snr_db": round(snr, 3), "snr_band": band_name(lo, hi), "noise_type": noise_type,
        "speaker": speaker, "sources": tuple(sources),
        "duration_s": length / SAMPLE_RATE,
    }
    return clean.astype(np.float32), noisy.astype(np.float32), info


def default_cache_dir() -> Path:
    base = os.environ.get("DENOISE_SFU_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "denoise-sfu"
    return root / "devset"


def screened_speakers(dev_speakers: dict[str, list[Path]],
                      min_bak: float) -> dict[str, list[Path]]:
    """Each speaker's recordings that pass the reference screen (speakers left empty dropped)."""
    from denoiser.corpus.screen import passing

    kept = set(passing([f for files in dev_speakers.values() for f in files], min_bak))
    out = {name: [f for f in files if f in kept] for name, files in dev_speakers.items()}
    return {name: files for name, files in out.items() if files}


def devset_name(seed: int, min_reference_bak: float | None) -> str:
    """The cache folder of a dev set: `v1-seed0` (no screen) or `v2-bak3.5-seed0`."""
    if min_reference_bak is None:
        return f"v1-seed{seed}"
    return f"v{DEVSET_VERSION}-bak{min_reference_bak:g}-seed{seed}"


def build_devset(n_clips: int = 64, seed: int = 0, cache_dir: Path | None = None,
                 min_reference_bak: float | None = MIN_REFERENCE_BAK,
                 ) -> tuple[Path, list[Clip]]:
    """The first `n_clips` clips of the dev set of `seed`, generating the missing ones.

    `min_reference_bak` screens the wanted speech (None: version 1, unscreened).
    Returns the folder holding the WAVs and `manifest.json`, and the clips.
    """
    if n_clips < 1:
        raise ValueError("n_clips must be at least 1")
    folder = (cache_dir or default_cache_dir()) / devset_name(seed, min_reference_bak)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    known: dict[str, Clip] = {}
    if manifest_path.is_file():
        for entry in json.loads(manifest_path.read_text())["clips"]:
            entry["sources"] = tuple(entry["sources"])
            known[entry["id"]] = Clip(**entry)
    clips: list[Clip] = []
    dev_speakers: dict[str, list[Path]] | None = None
    references: dict[str, list[Path]] = {}
    dev_noises: list[Path] = []
    for i in range(n_clips):
        clip_id = f"clip{i:04d}"
        clip = known.get(clip_id)
        if clip and (folder / clip.clean).is_file() and (folder / clip.noisy).is_file():
            clips.append(clip)
            continue
        if dev_speakers is None:
            dev_speakers = speakers("dev")
            dev_noises = corpus_files("noise", "dev")
            references = (dev_speakers if min_reference_bak is None
                          else screened_speakers(dev_speakers, min_reference_bak))
            if len(references) < 8 or not dev_noises:
                raise RuntimeError(f"too little dev material under {SHARED_DATA_DIR}: "
                                   f"{len(references)} speakers with clean references, "
                                   f"{len(dev_noises)} noises")
        clean, noisy, info = make_clip(seed, i, dev_speakers, dev_noises, references)
        clip = Clip(id=clip_id, clean=f"{clip_id}_clean.wav", noisy=f"{clip_id}_noisy.wav",
                    **info)  # type: ignore[arg-type]
        sf.write(folder / clip.clean, clean, SAMPLE_RATE, subtype="FLOAT")
        sf.write(folder / clip.noisy, noisy, SAMPLE_RATE, subtype="FLOAT")
        known[clip_id] = clip
        clips.append(clip)
    _write_manifest(manifest_path, seed, known.values(), min_reference_bak)
    return folder, clips


def _write_manifest(path: Path, seed: int, clips: Iterable[Clip],
                    min_reference_bak: float | None) -> None:
    body = {"version": 1 if min_reference_bak is None else DEVSET_VERSION, "seed": seed,
            "sample_rate": SAMPLE_RATE,
            "split_rule": f"sha1({SPLIT_SALT!r}+group)[:8] % 100 < {DEV_PERCENT}",
            "reference_screen": None if min_reference_bak is None
            else f"DNSMOS BAK >= {min_reference_bak:g} (denoiser.corpus.screen)",
            "clips": [asdict(c) for c in sorted(clips, key=lambda c: c.id)]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1))
    tmp.replace(path)


def read_clip(folder: Path, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) float32 arrays of a cached clip."""
    clean, _ = sf.read(str(folder / clip.clean), dtype="float32")
    noisy, _ = sf.read(str(folder / clip.noisy), dtype="float32")
    return clean, noisy
