"""`denoise-sfu worker`: the shared denoising worker service (not built yet).

The flags are the contract (DESIGN.md); running it says clearly that it does not exist yet,
so nobody mistakes it for a worker that silently does nothing.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("worker", help="the shared denoising worker (not yet available)")
    p.add_argument("--listen", default="0.0.0.0:7100", metavar="HOST:PORT")
    p.add_argument("--redis", default=None, metavar="URL")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("error: `denoise-sfu worker` is not implemented yet; run `denoise-sfu serve` with the "
          "in-process engine (--engine local) instead", file=sys.stderr)
    return 2
