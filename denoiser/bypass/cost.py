"""CPU time of `BypassDetector.update` per 10 ms hop, one stream, one thread.

    python -m denoiser.bypass.cost [--baseline TREE] [--rounds 3]

Times the detector of this checkout (and, with `--baseline`, the one in another checkout of the
project, e.g. `git archive <commit> denoiser models | tar -x -C /tmp/old`) in fresh
subprocesses, alternating, on the same audio: 10 s of hold music, 5 s of a gliding tone in
noise, 30 DTMF digits. Prints one JSON line. CPU time, not wall time, so that other processes
on a shared machine count less (they still cost cache and frequency: compare only figures from
one run).
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
from denoiser.bypass.synth import dtmf_sequence, white_noise
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
print(json.dumps({"hops": len(hops), "cpu_us": (time.process_time() - t) / len(hops) * 1e6}))
"""


def measure(tree: Path) -> float:
    """Microseconds of CPU per hop for the detector found under `tree`, in a fresh process."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tree)], capture_output=True,
                         text=True, env=env, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_us"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout whose detector is timed alternately")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parents[2]
    trees = {"this": here} | ({"baseline": args.baseline} if args.baseline else {})
    runs: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(max(1, args.rounds)):
        for name, tree in trees.items():
            runs[name].append(measure(tree))
    print(json.dumps({name: {"cpu_us_per_hop": [round(v, 1) for v in vs],
                             "min": round(min(vs), 1)} for name, vs in runs.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
