"""`denoise-sfu token --room R --identity I [--ttl S] [--secret S]`: print a room token."""

from __future__ import annotations

import argparse
import os
import sys

from sfu.auth import GRANTS, issue_token
from sfu.settings import env_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("token", help="print a signed room token (JWT)",
                                   description="Print an HS256 JWT for one identity in one room.")
    parser.add_argument("--room", required=True, help="room name")
    parser.add_argument("--identity", required=True, help="participant identity (JWT sub)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds [3600]")
    parser.add_argument("--secret", default=None,
                        help=f"HMAC secret of the server [{env_name('--secret')}]")
    parser.add_argument("--grant", action="append", choices=GRANTS, dest="grants",
                        help="grant to include (repeatable; default: publish and subscribe)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get(env_name("--secret"), "")
    if not secret:
        print("error: no secret: pass --secret or set DENOISE_SFU_SECRET", file=sys.stderr)
        return 2
    try:
        token = issue_token(secret, args.room, args.identity, args.ttl, args.grants or GRANTS)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(token)
    return 0
