"""The `denoise-sfu` command: one sub-command per module, each registering its own parser.

Every command module exposes `register(subparsers)`, which adds its parser and sets `func`
(a callable taking the parsed namespace and returning an exit code). Modules are imported
lazily by name so that `denoise-sfu token` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (command, module that registers it). `bench` groups `bench engine` and `bench sfu`.
COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("serve", "sfu.commands.serve"),
    ("worker", "denoiser.commands.worker"),
    ("token", "sfu.commands.token"),
    ("denoise", "denoiser.commands.denoise"),
    ("train", "denoiser.commands.train"),
    ("eval", "denoiser.commands.evaluate"),
    ("corpus", "denoiser.commands.corpus"),
    ("bench", "sfu.commands.bench"),
)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="denoise-sfu", description="Server-side noise cancellation for WebRTC calls."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, module_name in COMMAND_MODULES:
        if wanted is not None and wanted != name:
            # Only the chosen command's module is imported; the others get a bare entry
            # so that `--help` still lists them.
            subparsers.add_parser(name, add_help=False)
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
