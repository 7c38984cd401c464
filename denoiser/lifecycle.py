"""Running a long-lived command (`serve`, `worker`) until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from denoiser.engine import EngineError


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """`asyncio.run(serve(stop))`, with `stop` set on SIGINT/SIGTERM; returns the exit code:
    0, or 1 with a one-line error for what a server cannot start without (an address in use,
    no engine)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on every platform
                loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    try:
        asyncio.run(main())
    except (EngineError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
