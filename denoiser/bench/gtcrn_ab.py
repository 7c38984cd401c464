"""`python -m denoiser.bench.gtcrn_ab [--ref COMMIT] [--batch B]`: the small rung's step now
against its code at an earlier commit, same weights, same process, alternating calls.

Why: on a shared machine wall-clock figures swing by 2-4x between runs; two versions timed in
turn in one process, by the minimum thread CPU time of a traced 2-hop call, see the same load.
The earlier `denoiser/model/gtcrn/{network,model}.py` are taken from git (`git show`) into a
temporary package. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from denoiser.model.traced import TracedSteps
from denoiser.model.weights import load_default_model

ROOT = Path(__file__).resolve().parents[2]


def reference_class(commit: str, folder: Path) -> type:
    package = folder / "gtcrn_ref"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("network", "model"):
        text = subprocess.run(["git", "show", f"{commit}:denoiser/model/gtcrn/{name}.py"],
                              cwd=ROOT, check=True, capture_output=True, text=True).stdout
        text = text.replace("denoiser.model.gtcrn.network", "gtcrn_ref.network")
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    from gtcrn_ref.model import GTCRN48

    return GTCRN48


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--ref", default="44c2b10", help="commit of the reference code")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hops", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    new = load_default_model(weights="small")
    with tempfile.TemporaryDirectory() as tmp:
        old = reference_class(args.ref, Path(tmp))(new.cfg)
        old.load_state_dict(new.state_dict())
        old.eval().requires_grad_(False)
        with torch.inference_mode():
            steps = {}
            for name, model in (("ref", old), ("now", new)):
                steps[name] = TracedSteps(model)
                steps[name].prepare(args.hops)
            hops = 0.05 * torch.randn(args.batch, args.hops * new.hop_size)
            states = {name: new.initial_state(args.batch) for name in steps}
            outs = {name: step(hops, states[name])[0] for name, step in steps.items()}
            error = float((outs["ref"] - outs["now"]).abs().max() / outs["ref"].abs().max())
            best = dict.fromkeys(steps, float("inf"))
            end = time.time() + args.seconds
            while time.time() < end:
                for name, step in steps.items():
                    start = time.thread_time()
                    step(hops, states[name])
                    best[name] = min(best[name], time.thread_time() - start)
    period = args.hops * new.hop_size / new.sample_rate
    print(json.dumps({
        "bench": "gtcrn_ab", "ref": args.ref, "batch": args.batch, "hops": args.hops,
        "ref_ms": round(best["ref"] * 1e3, 2), "now_ms": round(best["now"] * 1e3, 2),
        "speedup": round(best["ref"] / best["now"], 3), "relative_error": error,
        "now_streams_per_core_at_80pct": round(0.8 * period / best["now"] * args.batch, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
