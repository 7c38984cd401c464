"""Which "clean" speech recordings are clean enough to be a reference or a training target.

Part of the corpus's clean speech is not clean: speechocean762 and some KLettres recordings
carry audible room noise and hiss. Used as the reference of a dev clip, such a recording
punishes a denoiser for removing that noise (STOI, PESQ and SI-SDR are computed against it);
used as a training target, it teaches the model to keep a noise floor.

The screen is DNSMOS P.835 BAK (background quality, about 1 to 5; the same model as
`denoiser.eval.quality`), scored once per recording and independent of any denoiser. The
studio corpora score a median 3.9 to 4.2 with 10th percentiles of 3.75 and above (LibriSpeech,
Asterisk, VCTK, CMU Arctic); `MIN_REFERENCE_BAK` = 3.5 sits below all of them and drops the
recordings whose background a listener hears. Scores of the shared corpus ship in
`reference_dnsmos_bak.json` beside this module (`python -m denoiser.corpus.screen` rewrites it);
any other file is scored when first asked about and cached beside the dev set.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import soundfile as sf

MIN_REFERENCE_BAK = 3.5
SHIPPED_SCORES = Path(__file__).with_name("reference_dnsmos_bak.json")
_SEGMENT_S = 9.01  # DNSMOS's input length
_MAX_SEGMENTS = 4  # long recordings: the first 36 s are enough to judge the background


def recording_bak(path: Path) -> float | None:
    """DNSMOS BAK of one recording (None when it is shorter than 0.5 s)."""
    from denoiser.eval.quality import dnsmos

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if audio.shape[0] < rate // 2:
        return None
    scores = dnsmos(audio.mean(axis=1), rate, hop_s=_SEGMENT_S, max_segments=_MAX_SEGMENTS)
    return scores["dnsmos_bak"]


def _key(path: Path) -> str:
    """Corpus-relative name (`clean/<folder>/<file>.wav`, also for a packed FLAC / Ogg copy of
    a corpus), else the absolute path."""
    from denoiser.corpus.devset import corpus_relative

    try:
        relative = corpus_relative(path)
    except ValueError:
        return str(Path(path).resolve())
    if relative.suffix.lower() in (".flac", ".ogg"):
        relative = relative.with_suffix(".wav")
    return relative.as_posix()


@cache
def _shipped() -> dict[str, float | None]:
    if not SHIPPED_SCORES.is_file():
        return {}
    return json.loads(SHIPPED_SCORES.read_text())["bak"]


def _cache_file() -> Path:
    from denoiser.corpus.devset import default_cache_dir

    return default_cache_dir() / "reference_bak.json"


def scores(paths: Iterable[Path]) -> dict[Path, float | None]:
    """BAK of each recording: shipped, cached, or computed now (and cached)."""
    paths = list(paths)
    shipped = _shipped()
    cached_path = _cache_file()
    cached: dict[str, float | None] = (json.loads(cached_path.read_text())
                                       if cached_path.is_file() else {})
    out: dict[Path, float | None] = {}
    fresh = False
    for p in paths:
        key = _key(p)
        if key in shipped:
            out[p] = shipped[key]
        elif key in cached:
            out[p] = cached[key]
        else:
            out[p] = cached[key] = recording_bak(p)
            fresh = True
    if fresh:
        cached_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=0, sort_keys=True))
        tmp.replace(cached_path)
    return out


def passing(paths: Iterable[Path], min_bak: float = MIN_REFERENCE_BAK) -> list[Path]:
    """The recordings whose background scores at least `min_bak` (order kept)."""
    return [p for p, bak in scores(paths).items() if bak is not None and bak >= min_bak]


def main(argv: list[str] | None = None) -> None:
    """Score every clean recording of the shared corpus and rewrite the shipped table."""
    from concurrent.futures import ProcessPoolExecutor

    from denoiser.corpus.devset import corpus_files

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    files = corpus_files("clean")
    with ProcessPoolExecutor(args.jobs) as pool:
        values = list(pool.map(recording_bak, files, chunksize=8))
    table = {_key(f): None if v is None else round(v, 4) for f, v in zip(files, values,
                                                                            strict=True)}
    SHIPPED_SCORES.write_text(json.dumps(
        {"metric": "DNSMOS P.835 BAK (speechmos sig_bak_ovr.onnx, first 36 s)",
         "bak": table}, indent=0, sort_keys=True) + "\n")
    print(f"{len(table)} recordings scored -> {SHIPPED_SCORES}")


if __name__ == "__main__":
    main()
