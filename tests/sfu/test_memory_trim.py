"""The periodic malloc_trim gives back what short sessions leave in the middle of the heap."""

from __future__ import annotations

import asyncio

import pytest

from sfu import memory_trim

pytestmark = pytest.mark.skipif(memory_trim._TRIM is None, reason="not glibc: nothing to trim")


def test_trim_releases_a_fragmented_heap() -> None:
    chunks = [bytearray(3000) for _ in range(20_000)]  # 60 MB of malloc'd (not pymalloc) blocks
    kept = chunks[::50]  # one block in 50 stays: glibc cannot shrink the heap's top past it
    del chunks
    released = memory_trim.trim()
    assert released > 20 * 2**20, released
    assert len(kept) == 400


async def test_trim_periodically_reports_each_pass() -> None:
    passes: list[int] = []
    task = asyncio.ensure_future(memory_trim.trim_periodically(0.01, passes.append))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(passes) >= 3 and all(p >= 0 for p in passes)
