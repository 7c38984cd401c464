"""Pack the train split of a corpus small enough to travel to a remote GPU box.

    python -m denoiser.training.pack ../shared/data .gpu/data [--speech-quality 0.3]

Only files that `denoiser.corpus.devset.split_of` puts in the train split are written, in the corpus
layout (`clean/`, `noise/`, `rir/`), so `denoise-sfu train --data .gpu/data` mixes exactly what
it would from the corpus. Noise and impulse responses are FLAC (lossless); speech is Ogg Vorbis
at `--speech-quality` (libsndfile's compression level, 0 best .. 1 smallest), 0.3 by default:
about 55 kb/s for 16 kHz speech, 40 % of FLAC's size, artefacts about 25 dB below the speech
(waveform SNR). Training targets then carry those artefacts (as they carry Opus's, 80 % of the
time, by design); FLAC everywhere (`--speech-quality -1`) is the lossless choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile as sf

from denoiser.corpus.devset import split_of


def pack(src: Path, dst: Path, speech_quality: float) -> tuple[int, int]:
    """Write the train split of `src` under `dst`; returns (files, bytes written)."""
    files = written = 0
    for kind in ("clean", "noise", "rir"):
        for path in sorted((src / kind).rglob("*.wav")):
            if split_of(path) != "train":
                continue
            audio, rate = sf.read(str(path), dtype="float32")
            lossy = kind == "clean" and speech_quality >= 0
            out = dst / path.relative_to(src).with_suffix(".ogg" if lossy else ".flac")
            out.parent.mkdir(parents=True, exist_ok=True)
            if lossy:
                sf.write(str(out), audio, rate, format="OGG", subtype="VORBIS",
                         compression_level=speech_quality)
            else:
                sf.write(str(out), audio, rate, format="FLAC", subtype="PCM_16")
            files += 1
            written += out.stat().st_size
    return files, written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="corpus folder (../shared/data)")
    parser.add_argument("dst", type=Path, help="folder to write")
    parser.add_argument("--speech-quality", type=float, default=0.3,
                        help="Vorbis compression level for speech, 0..1; -1 for FLAC")
    args = parser.parse_args(argv)
    files, written = pack(args.src, args.dst, args.speech_quality)
    print(f"{files} files, {written / 1e6:.1f} MB in {args.dst}")


if __name__ == "__main__":
    main()
