"""Give the heap's free pages back to the kernel now and then (glibc's `malloc_trim`).

Each session that comes and goes (an offer's peer connection, its DTLS context, SDP strings)
leaves free chunks in the middle of glibc's main heap. glibc hands back only the top of the
heap on its own, so a node that has served many short sessions keeps their high-water mark
as resident memory. `malloc_trim(0)` also releases whole free pages inside the heap
(`madvise(MADV_DONTNEED)`). It blocks the event loop while it runs: 2.6 ms to give back
55 MiB of a fragmented heap on this machine, 0.13 ms when there is nothing to give back
(tests/sfu/test_memory_trim.py builds such a heap), once a minute. Elsewhere than glibc
this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0  # seconds


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _load_trim()


def resident_bytes() -> int:
    """This process's resident set (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int:
    """Release free heap pages now; returns the resident bytes it gave back (0 if none)."""
    if _TRIM is None:
        return 0
    before = resident_bytes()
    _TRIM(0)
    return max(0, before - resident_bytes())


async def trim_periodically(interval: float = DEFAULT_INTERVAL,
                            on_trimmed: Callable[[int], None] | None = None) -> None:
    """Run `trim()` every `interval` seconds until cancelled."""
    if _TRIM is None:
        return
    while True:
        await asyncio.sleep(interval)
        released = trim()
        if on_trimmed is not None:
            on_trimmed(released)
