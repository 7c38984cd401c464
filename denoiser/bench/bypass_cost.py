"""CPU time of `BypassDetector.update` per 10 ms hop, one stream, one thread; and what a
stream in mode `auto` costs the event loop per hop.

    python -m denoiser.bench.bypass_cost [--baseline TREE] [--rounds 3]

Times the detector of this checkout (and, with `--baseline`, the one in another checkout of the
project, e.g. `git archive <commit> denoiser models | tar -x -C /tmp/old`) in fresh
subprocesses, alternating, on the same audio: 10 s of hold music, 5 s of a gliding tone in
noise, 30 DTMF digits. Prints one JSON line. CPU time, not wall time, so that other processes
on a shared machine count less (they still cost cache and frequency: compare only figures from
one run).

`loop_us_per_hop`: CPU time of the event-loop thread (`time.thread_time`) per hop through
`DenoisedStream.process_hops` in mode `auto` with the detector, two hops per call as the SFU
sends a codec frame, over an engine that answers at once (it returns its input: the model's
cost is not the question here). With the detector on the loop this is the detector's cost plus
the stream's own; with the detector in its thread, the stream's own plus the hand-over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import soundfile as sf
from denoiser.bypass.analysis import resample
from denoiser.bypass.detector import BypassDetector
from denoiser.eval.tone_synth import dtmf_sequence, white_noise
from denoiser.paths import SHARED_DATA_DIR
SR, HOP = 48000, 480
def at(x, db):
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * 10 ** (db / 20)).astype(np.float32)
path = sorted((SHARED_DATA_DIR / "music").rglob("*.wav"))[0]
x, sr = sf.read(path, dtype="float32")
music = at(resample(x[: 10 * sr], sr, SR), -24)
rng = np.random.default_rng(0)
glide = at(np.sin(np.cumsum(rng.uniform(0.01, 0.05, 5 * SR))), -26) + white_noise(5.0, SR, -36)
x = np.concatenate([music, glide, dtmf_sequence("0123456789" * 3)[0]])
hops = [x[i : i + HOP].copy() for i in range(0, len(x) - HOP + 1, HOP)]
det = BypassDetector()
for h in hops[:200]:
    det.update(h)
det = BypassDetector()
t = time.process_time()
for h in hops:
    det.update(h)
cpu_us = (time.process_time() - t) / len(hops) * 1e6
import asyncio
from denoiser.engine import Engine
from denoiser.stream import DenoisedStream
class Echo(Engine):
    sample_rate, hop_size, latency_samples = SR, HOP, 1440
    async def start(self): pass
    async def close(self): pass
    def open_stream(self, stream_id): pass
    def close_stream(self, stream_id): pass
    async def process(self, stream_id, samples):
        return samples
frames = [np.concatenate(hops[i : i + 2]) for i in range(0, len(hops) - 1, 2)]
async def loop_cost():
    s = DenoisedStream(Echo(), "cost", mode="auto", detector=BypassDetector(), deadline=None)
    for f in frames[:100]:
        await s.process_hops(f)
    s = DenoisedStream(Echo(), "cost", mode="auto", detector=BypassDetector(), deadline=None)
    t = time.thread_time()
    for f in frames:
        await s.process_hops(f)
    return (time.thread_time() - t) / (2 * len(frames)) * 1e6
loop_us = asyncio.run(loop_cost())
print(json.dumps({"hops": len(hops), "cpu_us": cpu_us, "loop_us": loop_us}))
"""


def measure(tree: Path) -> tuple[float, float]:
    """Microseconds of CPU per hop for the detector found under `tree`, and of the event
    loop's thread per hop of a stream with it, in a fresh process."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tree)], capture_output=True,
                         text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return float(res["cpu_us"]), float(res["loop_us"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout whose detector is timed alternately")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parents[2]
    trees = {"this": here} | ({"baseline": args.baseline} if args.baseline else {})
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(max(1, args.rounds)):
        for name, tree in trees.items():
            runs[name].append(measure(tree))
    out = {}
    for name, vs in runs.items():
        cpu, loop = [v[0] for v in vs], [v[1] for v in vs]
        out[name] = {"cpu_us_per_hop": [round(v, 1) for v in cpu], "min": round(min(cpu), 1),
                     "loop_us_per_hop": [round(v, 1) for v in loop],
                     "loop_min": round(min(loop), 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
