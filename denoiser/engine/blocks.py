"""Blocks: many streams' hops handed to the engine as one array, for the worker's bulk path.

`LocalEngine.submit` takes one stream's hops and makes a few objects per hop; at thousands
of streams per tick that bookkeeping, not the model, is the cost. A block is the hops of B
streams, [B, T*hop] with their slots as an int64 array: the engine runs it with the slots as
the gather/scatter index and answers it with one future of [B, T*hop]. The tick merges the
blocks that arrived together (same T, no slot twice) into one model call; a block whose slots
overlap an earlier one (a stream's next frame before the last ran) gets a call of its own,
after it, so each stream's hops still run in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np


@dataclass
class Block:
    slots: np.ndarray  # int64[B], distinct
    hops: np.ndarray  # float32[B, T*hop], owned by the engine
    future: asyncio.Future[np.ndarray]
    arrived: float

    @property
    def rows(self) -> int:
        return int(self.slots.size)


@dataclass
class BlockCall:
    """One model call made of whole blocks: their slots and hops concatenated."""

    slots: np.ndarray
    hops: np.ndarray
    blocks: list[Block]


def merge_blocks(blocks: list[Block], capacity: int) -> list[BlockCall]:
    """Calls for `blocks` in arrival order: consecutive blocks of the same T whose slots do not
    meet share a call; any other block starts a new one."""
    calls: list[BlockCall] = []
    group: list[Block] = []
    taken = np.zeros(capacity + 1, dtype=bool)

    def close() -> None:
        if not group:
            return
        slots = group[0].slots if len(group) == 1 else np.concatenate([b.slots for b in group])
        hops = group[0].hops if len(group) == 1 else np.concatenate([b.hops for b in group])
        calls.append(BlockCall(slots, hops, list(group)))
        group.clear()
        taken[:] = False

    for block in blocks:
        if group and (block.hops.shape[1] != group[0].hops.shape[1]
                      or taken[block.slots].any()):
            close()
        group.append(block)
        taken[block.slots] = True
    close()
    return calls


def answer_call(call: BlockCall, out: np.ndarray) -> None:
    """Hand each block its rows of the call's output (views, no copy)."""
    start = 0
    for block in call.blocks:
        end = start + block.rows
        if not block.future.done():
            block.future.set_result(out[start:end])
        start = end
