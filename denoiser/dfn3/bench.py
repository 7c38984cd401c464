"""Measure DFN3's batched step: ms per step at several batch sizes and MACs per hop.

    python -m denoiser.dfn3.bench [--batches 1 16 64 256] [--threads 1] [--steps 50]

Prints one line per batch size and a final JSON line. Real-time streams per core =
B * 10 ms / step_ms (at 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from denoiser.dfn3.model import DFN3
from denoiser.models import load_dfn3


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_dfn3(device=args.device)
    macs = macs_per_hop(load_dfn3())
    results = []
    for batch in args.batches:
        ms, best = time_step(model, batch, args.steps)
        streams = batch * 10.0 / ms
        results.append({"batch": batch, "step_ms": round(ms, 3), "min_step_ms": round(best, 3),
                        "realtime_streams": round(streams, 1)})
        print(f"B={batch:4d}  median {ms:8.2f} ms/step (min {best:7.2f})  {streams:7.1f} "
              f"real-time streams ({args.threads} thread(s), {args.device})", flush=True)
    print(json.dumps({"model": "dfn3", "macs_per_hop": macs, "threads": args.threads,
                      "load_average_1m": round(os.getloadavg()[0], 2),
                      "device": args.device, "results": results}))


if __name__ == "__main__":
    main()
