"""`denoise-sfu bench engine | sfu`: benchmarks that print figures and end with ONE JSON line.

`bench engine` lives in `denoiser.bench_engine`; `bench sfu` in `sfu.bench_sfu`.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("bench", help="benchmarks (engine, sfu); end with one JSON line")
    which = parser.add_subparsers(dest="bench", required=True, metavar="{engine,sfu,e2e}")
    from denoiser.bench_engine import register_bench_engine

    register_bench_engine(which)
    try:
        from sfu.bench_sfu import register_bench_sfu
    except ImportError as exc:
        reason = str(exc)
        sfu = which.add_parser("sfu", help="(unavailable)")
        sfu.set_defaults(func=lambda _args: _unavailable(reason))
    else:
        register_bench_sfu(which)
    from sfu.bench_e2e import register_bench_e2e

    register_bench_e2e(which)


def _unavailable(reason: str) -> int:
    print(f"error: bench sfu is unavailable: {reason}", file=sys.stderr)
    return 2
