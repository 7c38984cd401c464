"""`denoise-sfu denoise IN OUT`: denoise a file through exactly the live streaming path.

The file is mixed to mono, resampled to 48 kHz, cut into 10 ms hops and sent hop by hop through
a `LocalEngine` and a `DenoisedStream` (no deadline: offline, nothing is late), then resampled
back to the input's rate. The delays of both resamplers and the model are known exactly
(`denoiser.resample`), so the output is cut to start at the input's first sample: same rate,
same length, sample-aligned.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_SECONDS = 0.5
PROGRESS_AFTER_SECONDS = 10.0


class DenoiseError(RuntimeError):
    """A clear, user-facing reason the file cannot be denoised."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "denoise", help="denoise an audio file (same rate and length, aligned to the input)",
        description="Denoise IN into OUT through the streaming engine. Any sample rate; "
                    "several channels are mixed to mono.")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("output", type=Path, metavar="OUT")
    p.add_argument("--mode", choices=("auto", "on", "off"), default="auto",
                   help="auto: keep music/tones/DTMF original; on: always denoise; off: bypass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--model", default="default",
                   help="'default' (models/dfn3_la1.pt), 'small' (models/gtcrn48.pt, the CPU "
                        "rung), a checkpoint (.pt path or a name in models/, e.g. dfn3.pt) or "
                        "module:factory returning a StreamingModel")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help=f"show a progress bar (default: for files over "
                        f"{PROGRESS_AFTER_SECONDS:.0f} s)")
    p.set_defaults(func=run)


def make_detector(mode: str) -> Any:
    """The tone/music detector for `auto`; None (denoise everything) when it is unavailable."""
    if mode != "auto":
        return None
    try:
        from denoiser.bypass import BypassDetector

        return BypassDetector()
    except (ImportError, OSError, ValueError) as exc:
        print(f"note: no tone/music detector ({exc}); auto denoises every hop", file=sys.stderr)
        return None


def read_mono(path: Path) -> tuple[np.ndarray, int, str, int]:
    """(mono float32 samples, rate, subtype, channels); DenoiseError if unusable."""
    import soundfile

    if not path.is_file():
        raise DenoiseError(f"{path}: no such file")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        subtype = soundfile.info(str(path)).subtype
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise DenoiseError(f"{path}: cannot read audio ({exc})") from exc
    if data.shape[0] == 0:
        raise DenoiseError(f"{path}: the file holds no audio samples")
    channels = data.shape[1]
    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32) if channels > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise DenoiseError(f"{path}: the audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono), int(rate), subtype, channels


async def denoise_signal(audio: np.ndarray, rate: int, model: Any, *, mode: str = "auto",
                         device: str = "auto", detector: Any = None,
                         progress: bool = False) -> tuple[np.ndarray, dict[str, int]]:
    """Denoise mono `audio` at `rate` through LocalEngine + DenoisedStream; aligned, same length.

    Returns the output and the stream's counters (hops denoised / passed through by reason).
    """
    from tqdm import tqdm

    from denoiser.engine.local import LocalEngine
    from denoiser.resample import Resampler
    from denoiser.stream import DenoisedStream

    n = audio.size
    async with LocalEngine(model, device=device, max_streams=1) as engine:
        sr, hop = engine.sample_rate, engine.hop_size
        stream = DenoisedStream(engine, "file", mode=mode, detector=detector, deadline=None)
        up = Resampler(rate, sr)
        down = Resampler(sr, rate, input_delay=up.delay + engine.latency_samples)
        wanted = down.delay + n  # output samples to collect before cutting the delay off
        chunk = max(1, int(rate * CHUNK_SECONDS))
        pending = np.zeros(0, dtype=np.float32)
        parts: list[np.ndarray] = []
        got, pos = 0, 0
        with tqdm(total=n, unit="sample", unit_scale=True, disable=not progress,
                  file=sys.stderr, desc="denoise") as bar:
            while got < wanted:
                if pos < n:
                    piece = audio[pos:pos + chunk]
                    pos += piece.size
                    bar.update(piece.size)
                else:  # flush the delays with silence
                    piece = np.zeros(chunk, dtype=np.float32)
                pending = np.concatenate([pending, up.process(piece)])
                whole = pending.size // hop * hop
                if not whole:
                    continue
                hops, pending = pending[:whole].reshape(-1, hop), pending[whole:]
                outs = [await stream.process_hop(h) for h in hops]
                out = down.process(np.concatenate(outs))
                parts.append(out)
                got += out.size
        stream.close()
    return np.concatenate(parts)[down.delay:down.delay + n], dict(stream.counters)


def write_like(path: Path, audio: np.ndarray, rate: int, subtype: str) -> None:
    """Write mono `audio`, keeping the input's sample format where OUT's format allows it."""
    import soundfile

    ext = path.suffix.lstrip(".").upper() or "WAV"
    major = {"OGA": "OGG"}.get(ext, ext)
    if not soundfile.check_format(major, subtype):
        subtype = soundfile.default_subtype(major) or "FLOAT"
    if subtype.startswith("PCM") or subtype in ("ULAW", "ALAW"):
        audio = np.clip(audio, -1.0, 1.0)
    try:
        soundfile.write(str(path), audio, rate, subtype=subtype)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise DenoiseError(f"{path}: cannot write audio ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    from denoiser.engine import EngineError
    from denoiser.model.weights import ModelLoadError, load_model

    try:
        audio, rate, subtype, channels = read_mono(args.input)
        if not args.output.parent.exists():
            raise DenoiseError(f"{args.output.parent}: no such directory")
        if channels > 1:
            print(f"note: {args.input} has {channels} channels; mixed to mono "
                  f"(the output is mono)", file=sys.stderr)
        model = load_model(args.model)
        detector = make_detector(args.mode)
        progress = (audio.size / rate >= PROGRESS_AFTER_SECONDS if args.progress is None
                    else args.progress)
        out, counters = asyncio.run(denoise_signal(
            audio, rate, model, mode=args.mode, device=args.device, detector=detector,
            progress=progress))
        write_like(args.output, out, rate, subtype)
    except (DenoiseError, ModelLoadError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    passed = {k: v for k, v in counters.items() if k != "denoised" and v}
    print(f"{args.output}: {out.size} samples at {rate} Hz; hops denoised "
          f"{counters['denoised']}, passed through {sum(passed.values())} {passed or ''}".rstrip(),
          file=sys.stderr)
    return 0
