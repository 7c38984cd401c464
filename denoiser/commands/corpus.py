"""`denoise-sfu corpus music`: fetch real music from Debian packages into a cache (offline data).

See denoiser/corpus/music_packages.py. Nothing here is imported by the serving path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "corpus", help="fetch training / dev data that the repository does not hold",
        description="Acquire data into a cache outside the repository.")
    sub = p.add_subparsers(dest="corpus_command", required=True, metavar="WHAT")
    m = sub.add_parser(
        "music", help="game-soundtrack music from Debian packages (apt-get download)",
        description="Download the music packages (apt-get download), extract their audio "
                    "(dpkg-deb -x), decode to mono 16 and 48 kHz WAV and write manifest.json "
                    "(package, version, file, licence, duration, kind, split).")
    m.add_argument("--cache", type=Path, default=None,
                   help="cache folder (default $DENOISE_SFU_CACHE_DIR/music or "
                        "~/.cache/denoise-sfu/music)")
    m.add_argument("--packages", default="",
                   help="comma-separated packages to (re)build (default: all sources)")
    m.add_argument("--offline", action="store_true",
                   help="use only the .debs already in CACHE/debs (no apt-get download)")
    m.add_argument("--force", action="store_true",
                   help="extract again packages already in the manifest")
    m.add_argument("--list", action="store_true", help="print the sources and exit")
    m.add_argument("--no-solo", action="store_true",
                   help="skip the solo-instrument phrases rendered with fluidsynth")
    m.add_argument("--solo-only", action="store_true",
                   help="only (re)render the solo-instrument phrases")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from denoiser.corpus.music_packages import SOURCES, CorpusError, acquire, default_cache

    if args.list:
        for s in SOURCES:
            print(f"{s.package:<28} {s.split:<5} {s.kind:<11} {s.licence}")
        return 0
    cache = args.cache or default_cache()
    if args.solo_only:
        from denoiser.corpus.solo_render import render_all

        try:
            solo = render_all(cache)
        except CorpusError as exc:
            print(f"denoise-sfu corpus music: {exc}", file=sys.stderr)
            return 2
        print(f"solo phrases: minutes {solo['minutes']}: {cache / 'solo_manifest.json'}")
        return 0
    wanted = [p.strip() for p in args.packages.split(",") if p.strip()] or None
    try:
        manifest = acquire(cache, wanted, offline=args.offline, force=args.force)
        if not args.no_solo and wanted is None:
            from denoiser.corpus.solo_render import render_all

            solo = render_all(cache)
            print(f"solo phrases: minutes {solo['minutes']}: {cache / 'solo_manifest.json'}")
    except CorpusError as exc:
        print(f"denoise-sfu corpus music: {exc}", file=sys.stderr)
        return 2
    print(f"{len(manifest['tracks'])} tracks, minutes {manifest['minutes']}: "
          f"{cache / 'manifest.json'}")
    return 0
