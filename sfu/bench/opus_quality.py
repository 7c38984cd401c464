"""What lowering the speakers' Opus complexity costs: time per frame and quality vs the original.

    python -m sfu.bench.opus_quality [--complexity 0,3,5,10] [CLIP ...]

Each clip (default: the speech clip in tests/data) goes through `OpusPacketEncoder` (the SFU's
own settings: 32 kbit/s VBR, VoIP, in-band FEC) at each complexity and back through libopus's
decoder; the decoded audio is aligned to the original (the codec's look-ahead) and scored with
PESQ wideband and SI-SDR. Encode time is the median per 20 ms frame, in this process. Ends
with ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from sfu.media.encoder import FRAME_SIZE, SAMPLE_RATE, TIME_BASE, OpusPacketEncoder

DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "tests" / "data" / "vctk_p286_011.flac"


def load_clip(path: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, rate)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return np.asarray(mono, dtype=np.float32)


def round_trip(audio: np.ndarray, complexity: int) -> tuple[np.ndarray, float, int]:
    """(decoded audio, median encode seconds per frame, payload bytes in all)."""
    import av

    encoder = OpusPacketEncoder(complexity=complexity)
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout, decoder.format = SAMPLE_RATE, "mono", "s16"
    frames = audio.shape[0] // FRAME_SIZE
    times, out, size = [], [], 0
    for i in range(frames):
        start = time.perf_counter()
        packets = encoder.encode(audio[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
        times.append(time.perf_counter() - start)
        for packet in packets:
            size += packet.size
            packet.time_base = TIME_BASE
            for frame in decoder.decode(packet):
                out.append(frame.to_ndarray().reshape(-1).astype(np.float32) / 32768.0)
    return np.concatenate(out), float(np.median(times)), size


def align(ref: np.ndarray, est: np.ndarray, max_lag: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    """Shift `est` by the lag that correlates best with `ref` (0..max_lag samples late)."""
    n = min(ref.shape[0], est.shape[0]) - max_lag
    scores = [float(np.dot(ref[:n], est[lag:lag + n])) for lag in range(max_lag)]
    lag = int(np.argmax(scores))
    m = min(ref.shape[0], est.shape[0] - lag)
    return ref[:m], est[lag:lag + m]


def run(clips: list[Path], levels: list[int]) -> dict[str, object]:
    from denoiser.eval.quality import pesq_wb, si_sdr

    rows = []
    for level in levels:
        pesq, sdr, times, bits, seconds = [], [], [], 0, 0.0
        for clip in clips:
            audio = load_clip(clip)
            decoded, per_frame, size = round_trip(audio, level)
            ref, est = align(audio, decoded)
            pesq.append(pesq_wb(ref, est))
            sdr.append(si_sdr(ref, est))
            times.append(per_frame)
            bits += 8 * size
            seconds += audio.shape[0] / SAMPLE_RATE
        rows.append({"complexity": level, "pesq_wb": round(float(np.mean(pesq)), 3),
                     "si_sdr_db": round(float(np.mean(sdr)), 2),
                     "encode_us_per_frame": round(1e6 * float(np.median(times)), 1),
                     "kbit_s": round(bits / seconds / 1000, 1)})
        r = rows[-1]
        print(f"complexity {level:2d}: PESQ-WB {r['pesq_wb']:.3f}  SI-SDR {r['si_sdr_db']:6.2f} dB"
              f"  encode {r['encode_us_per_frame']:6.1f} us/frame  {r['kbit_s']} kbit/s",
              file=sys.stderr)
    return {"bench": "opus_quality", "clips": [c.name for c in clips], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, default=[DEFAULT_CLIP])
    parser.add_argument("--complexity", default="0,3,5,10",
                        type=lambda s: [int(x) for x in s.split(",")])
    args = parser.parse_args(argv)
    print(json.dumps(run(args.clips, args.complexity)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
