"""Measure DFN3's batched step: ms per step at several batch sizes and MACs per hop.

    python -m denoiser.bench.dfn3_step [--batches 1 16 64 256] [--threads 1] [--steps 50]
                                  [--baseline /path/to/other/checkout]

Prints one line per batch size and a final JSON line. Real-time streams per core =
B * 10 ms / step_ms (at 1 thread). `--baseline` also loads DFN3 from another source tree
(e.g. `git archive <rev> denoiser | tar -x -C /tmp/base`) and times both models step by step,
alternating, in this one process, so that the ratio holds on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from denoiser.model.dfn3.config import SIZES, sized_config
from denoiser.model.dfn3.model import DFN3
from denoiser.model.weights import load_dfn3
from denoiser.paths import MODELS_DIR


def untrained(size: str) -> DFN3:
    """A fresh network of a named size (`SIZES`) at look-ahead 1, in eval mode: what a student
    of that shape would cost per step (its output is meaningless)."""
    cfg = sized_config(size, conv_lookahead=1, df_lookahead=1)
    return DFN3(cfg).eval().requires_grad_(False)


def untrained_small() -> DFN3:
    """`dfn3-s` untrained: `denoise-sfu bench engine --model
    denoiser.bench.dfn3_step:untrained_small` gives what a student of that size would carry."""
    return untrained("dfn3-s")


def macs_per_hop(model: DFN3) -> int:
    """Multiply-accumulates of one step for one stream, counted by torch's FlopCounterMode
    on a real step: every matmul, bmm and conv (GRUs, linears, pointwise convs, ERB matrices).
    The depthwise frequency convs are elementwise multiply-adds and add about 30 k more."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.step(torch.zeros(1, model.hop_size), model.initial_state(1))
    return counter.get_total_flops() // 2


def time_step(model: DFN3, batch: int, steps: int, warmup: int = 5) -> tuple[float, float]:
    """(median, min) milliseconds of one batched step (random audio, state carried)."""
    state = model.initial_state(batch)
    hops = torch.randn(steps + warmup, batch, model.hop_size) * 0.05
    times = []
    with torch.inference_mode():
        for i in range(steps + warmup):
            t0 = time.perf_counter()
            _, state = model.step(hops[i], state)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    return 1000.0 * times[len(times) // 2], 1000.0 * times[0]


def load_baseline(tree: str) -> DFN3:
    """DFN3 (shipped weights) as the `denoiser` package under `tree` defines it; this tree's
    modules are put back afterwards."""
    ours = {k: v for k, v in sys.modules.items() if k == "denoiser" or k.startswith("denoiser.")}
    models_dir = os.environ.setdefault("DENOISE_SFU_MODELS_DIR", str(MODELS_DIR))
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, tree)
    try:
        from denoiser.model.weights import load_dfn3 as load_other
        return load_other()
    finally:
        sys.path.remove(tree)
        for name in [k for k in sys.modules if k == "denoiser" or k.startswith("denoiser.")]:
            del sys.modules[name]
        sys.modules.update(ours)
        if models_dir == str(MODELS_DIR):
            os.environ.pop("DENOISE_SFU_MODELS_DIR")


def time_pair(models: dict[str, DFN3], batch: int, steps: int,
              warmup: int = 5) -> dict[str, tuple[float, float]]:
    """(median, min) ms per step of each model, their steps alternating (order flipped each
    step) on the same random audio."""
    hop_size = next(iter(models.values())).hop_size
    hops = torch.randn(steps + warmup, batch, hop_size) * 0.05
    states = {name: m.initial_state(batch) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    with torch.inference_mode():
        for i in range(steps + warmup):
            for name in order if i % 2 else order[::-1]:
                t0 = time.perf_counter()
                _, states[name] = models[name].step(hops[i], states[name])
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return {name: (1000.0 * sorted(t)[len(t) // 2], 1000.0 * min(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="dfn3",
                        help="dfn3: the original weights; a smaller size: an untrained network of "
                             "that shape at look-ahead 1 (its cost only)")
    parser.add_argument("--baseline", metavar="TREE",
                        help="a source tree holding another denoiser/ to compare with (CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.size == "dfn3":
        model, macs = load_dfn3(device=args.device), macs_per_hop(load_dfn3())
    else:
        model, macs = untrained(args.size).to(args.device), macs_per_hop(untrained(args.size))
    if args.baseline:
        compare(model, load_baseline(args.baseline), args)
        return
    results = []
    for batch in args.batches:
        ms, best = time_step(model, batch, args.steps)
        streams = batch * 10.0 / ms
        results.append({"batch": batch, "step_ms": round(ms, 3), "min_step_ms": round(best, 3),
                        "realtime_streams": round(streams, 1)})
        print(f"B={batch:4d}  median {ms:8.2f} ms/step (min {best:7.2f})  {streams:7.1f} "
              f"real-time streams ({args.threads} thread(s), {args.device})", flush=True)
    print(json.dumps({"model": args.size, "macs_per_hop": macs, "threads": args.threads,
                      "load_average_1m": round(os.getloadavg()[0], 2),
                      "device": args.device, "results": results}))


def compare(model: DFN3, baseline: DFN3, args: argparse.Namespace) -> None:
    """Baseline vs this tree, interleaved: min and median ms per step and their ratios."""
    results = []
    for batch in args.batches:
        t = time_pair({"baseline": baseline, "this": model}, batch, args.steps)
        row = {"batch": batch, "baseline_ms": [round(v, 3) for v in t["baseline"]],
               "this_ms": [round(v, 3) for v in t["this"]],
               "speedup_median": round(t["baseline"][0] / t["this"][0], 2),
               "speedup_min": round(t["baseline"][1] / t["this"][1], 2)}
        results.append(row)
        print(f"B={batch:4d}  baseline median {t['baseline'][0]:8.2f} (min {t['baseline'][1]:7.2f})"
              f"  this median {t['this'][0]:8.2f} (min {t['this'][1]:7.2f}) ms/step  speedup "
              f"{row['speedup_median']:.2f}x median, {row['speedup_min']:.2f}x min", flush=True)
    print(json.dumps({"model": "dfn3", "baseline": args.baseline, "threads": args.threads,
                      "load_average_1m": round(os.getloadavg()[0], 2), "results": results}))


if __name__ == "__main__":
    main()
