"""The music dev set: 10 s excerpts of the held-out (dev) packages of the music cache.

Disjoint from training by source: every track of a `dev` package of
`denoiser.corpus.music_packages.SOURCES`, and the solo phrases rendered from another soundfont
(`denoiser.corpus.solo_render`), none of which the classifier's training reads. Each clip opens
a stream on the music (a cold start: a hold queue that picks up), as the suite's other music
clips do. Tracks are taken evenly from each package's sorted list (at most `per_package`), the
excerpt starting at a quarter of the track (at most 20 s in, past fade-ins), at -24 dBFS RMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from denoiser.corpus.music_packages import default_cache, tracks

SECONDS = 10.0


@dataclass(frozen=True)
class MusicClip:
    name: str  # package/track
    kind: str  # kind of music (music_packages.KINDS)
    package: str
    path: Path  # the 48 kHz WAV in the cache
    start: float  # seconds into the track


def dev_clips(cache: Path | None = None, per_package: int = 4, seconds: float = SECONDS
              ) -> list[MusicClip]:
    """The dev clips of a filled cache ([] where `denoise-sfu corpus music` has not run)."""
    rows = [t for t in tracks(cache or default_cache(), "dev") if float(t["seconds"]) >= seconds]
    by_package: dict[str, list[dict[str, Any]]] = {}
    for t in rows:
        key = (f"{t['package']}:{t['kind']}" if t.get("kind_source") == "rendered"
               else str(t["package"]))
        by_package.setdefault(key, []).append(t)
    clips = []
    for key in sorted(by_package):
        group = sorted(by_package[key], key=lambda t: str(t["member"]))
        rendered = group[0].get("kind_source") == "rendered"
        take = len(group) if rendered else min(per_package, len(group))
        picks = np.unique(np.linspace(0, len(group) - 1, take).round().astype(int))
        for i in picks:
            t = group[int(i)]
            dur = float(t["seconds"])
            start = 0.0 if rendered else min(20.0, max(0.0, dur / 4), dur - seconds)
            stem = Path(str(t["wav"]["48000"])).stem
            clips.append(MusicClip(f"{t['package']}/{stem}", str(t["kind"]), str(t["package"]),
                                   Path(str(t["path48"])), round(start, 2)))
    return clips


def load_clip(clip: MusicClip, seconds: float = SECONDS) -> np.ndarray:
    """The clip's audio, 48 kHz mono float32 (not yet levelled)."""
    info = sf.info(clip.path)
    x, _ = sf.read(clip.path, start=int(clip.start * info.samplerate),
                   frames=int(seconds * info.samplerate), dtype="float32", always_2d=True)
    if info.samplerate != 48_000:
        raise ValueError(f"{clip.path}: expected 48 kHz, found {info.samplerate}")
    return x.mean(1)
