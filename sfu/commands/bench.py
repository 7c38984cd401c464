"""`denoise-sfu bench engine | worker | sfu | e2e`: benchmarks that print figures and end with
ONE JSON line.

`bench engine` lives in `denoiser.bench.engine`, `bench worker` in `denoiser.bench.worker`;
`bench sfu` in `sfu.bench.load`, `bench e2e` in `sfu.bench.e2e`, `bench fuzz` in
`sfu.bench.fuzz.runner`, `bench soak` in `sfu.bench.soak`.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (engine, worker, sfu, e2e); end "
                                   "with one JSON line")
    which = parser.add_subparsers(dest="bench", required=True,
                                  metavar="{engine,worker,sfu,e2e,placement,fuzz,soak}")
    from denoiser.bench.engine import register_bench_engine
    from denoiser.bench.worker import register_bench_worker

    register_bench_engine(which)
    register_bench_worker(which)
    # The SFU benches need the media stack (PyAV, aiortc); `bench engine` runs without it (a
    # bare GPU box, a training machine).
    try:
        from sfu.bench.load import register_bench_sfu
    except ImportError as exc:
        _register_unavailable(which, "sfu", str(exc))
    else:
        register_bench_sfu(which)
    try:
        from sfu.bench.e2e import register_bench_e2e
    except ImportError as exc:
        _register_unavailable(which, "e2e", str(exc))
    else:
        register_bench_e2e(which)
    from sfu.bench.placement import register_bench_placement

    register_bench_placement(which)
    try:
        from sfu.bench.fuzz.runner import register_bench_fuzz
    except ImportError as exc:
        _register_unavailable(which, "fuzz", str(exc))
    else:
        register_bench_fuzz(which)
    try:
        from sfu.bench.soak import register_bench_soak
    except ImportError as exc:
        _register_unavailable(which, "soak", str(exc))
    else:
        register_bench_soak(which)


def _register_unavailable(which: argparse._SubParsersAction, name: str,
                          reason: str) -> None:
    parser = which.add_parser(name, help="(unavailable)")
    parser.set_defaults(func=lambda _args: _unavailable(name, reason))


def _unavailable(name: str, reason: str) -> int:
    print(f"error: bench {name} is unavailable: {reason}", file=sys.stderr)
    return 2
