"""The worker's side of the bulk layout: a TICK goes into the engine as arrays.

Per TICK, whatever its number of entries: look the handles up in the connection's slot table
(one numpy index), check sizes and finiteness row-wise, hand the engine one block per distinct
entry size (`LocalEngine.submit_block`, normally one: every stream sends a 20 ms frame), and
answer with one RESULT whose samples are the block's output bytes. Python runs per entry only
where something happens to that stream alone: OPEN, CLOSE, a refusal.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np

from denoiser.engine import EngineError, EngineFull
from denoiser.engine.local import MAX_ROUNDS_PER_TICK, LocalEngine
from denoiser.worker.bulk import MAX_HANDLE, BulkTick, bulk_result_parts
from denoiser.worker.protocol import Flags, Status

_OK, _FULL, _UNKNOWN, _ERROR = (np.uint8(s) for s in (Status.OK, Status.FULL, Status.UNKNOWN,
                                                       Status.ERROR))
_NAMES = {int(s): s.name.lower() for s in Status}


class BulkStreams:
    """One bulk-layout connection's streams (handle -> engine slot) and its TICKs."""

    def __init__(self, engine: LocalEngine, prefix: str) -> None:
        self.engine = engine
        self.prefix = prefix
        self.slots = np.full(64, -1, dtype=np.int64)  # by handle; -1: not open here

    def _key(self, handle: int) -> str:
        return f"{self.prefix}#{handle}"

    def _open(self, handle: int) -> tuple[np.uint8, str] | None:
        if handle >= self.slots.size:
            size = self.slots.size
            while size <= handle:
                size *= 2
            grown = np.full(min(size, MAX_HANDLE), -1, dtype=np.int64)
            grown[:self.slots.size] = self.slots
            self.slots = grown
        self._close(handle)  # OPEN on a live stream starts it afresh
        key = self._key(handle)
        try:
            self.engine.open_stream(key)
        except EngineFull as exc:
            return _FULL, str(exc)
        except EngineError as exc:
            return _ERROR, str(exc)
        self.slots[handle] = self.engine.slot_of(key)
        return None

    def _close(self, handle: int) -> None:
        if handle < self.slots.size and self.slots[handle] >= 0:
            self.engine.close_stream(self._key(handle))
            self.slots[handle] = -1

    @property
    def open_count(self) -> int:
        return int(np.count_nonzero(self.slots >= 0))

    def close_all(self) -> None:
        for handle in np.flatnonzero(self.slots >= 0):
            self._close(int(handle))

    def on_tick(self, tick: BulkTick, writer: asyncio.StreamWriter,
                counts: Counter[str]) -> None:
        """Queue the TICK's hops in the engine now; the RESULT goes out when they are done."""
        n = tick.count
        status = np.zeros(n, dtype=np.uint8)
        reasons: dict[int, str] = {}
        for i in np.flatnonzero(tick.flags & Flags.OPEN):
            refused = self._open(int(tick.handles[i]))
            if refused is not None:
                status[i], reasons[int(i)] = refused
        handles = tick.handles.astype(np.int64)
        known = handles < self.slots.size
        slot = np.full(n, -1, dtype=np.int64)
        slot[known] = self.slots[handles[known]]
        sizes = tick.sizes.astype(np.int64)
        has = sizes > 0
        hop = self.engine.hop_size
        self._refuse(status, reasons, has & (slot < 0), _UNKNOWN, "unknown stream: send OPEN")
        self._refuse(status, reasons, has & ((sizes % hop != 0)
                                             | (sizes > MAX_ROUNDS_PER_TICK * hop)), _ERROR,
                     f"samples must be 1-{MAX_ROUNDS_PER_TICK} whole hops of {hop}")
        run = has & (status == _OK)
        groups: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        uniform = bool(has.any()) and bool(np.all(sizes[has] == sizes[has][0]))
        for size in np.unique(sizes[run]):
            idx = np.flatnonzero(run & (sizes == size))
            if uniform:  # every entry with samples has this size: rows are a reshape
                rows = tick.samples.reshape(-1, int(size))
                if idx.size != rows.shape[0]:
                    rows = rows[run[has]]
            else:
                starts = np.cumsum(sizes) - sizes
                rows = tick.samples[starts[idx, None] + np.arange(int(size))]
            finite = np.isfinite(rows).all(axis=1)
            if not finite.all():
                self._refuse(status, reasons, np.isin(np.arange(n), idx[~finite]), _ERROR,
                             "samples contain NaN or infinite values")
                idx, rows = idx[finite], rows[finite]
            try:
                # Rows may be read-only views of the payload: the engine only reads them.
                future = self.engine.submit_block(slot[idx], rows)
            except EngineError as exc:
                self._refuse(status, reasons, np.isin(np.arange(n), idx), _ERROR, str(exc))
                continue
            groups.append((idx, future))
        for i in np.flatnonzero(tick.flags & Flags.CLOSE):
            self._close(int(tick.handles[i]))
        if has.any():
            _BulkReply(writer, tick, has, status, reasons, groups, counts)

    @staticmethod
    def _refuse(status: np.ndarray, reasons: dict[int, str], mask: np.ndarray,
                code: np.uint8, reason: str) -> None:
        mask = mask & (status == _OK)
        status[mask] = code
        for i in np.flatnonzero(mask):
            reasons[int(i)] = reason


class _BulkReply:
    """The RESULT of one bulk TICK, written when the last of its blocks is answered."""

    def __init__(self, writer: asyncio.StreamWriter, tick: BulkTick, has: np.ndarray,
                 status: np.ndarray, reasons: dict[int, str],
                 groups: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]],
                 counts: Counter[str]) -> None:
        self.writer, self.tick, self.has, self.status = writer, tick, has, status
        self.reasons, self.groups, self.counts = reasons, groups, counts
        self.waiting = len(groups)
        if not groups:
            self._send()
        for _, future in groups:
            future.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[np.ndarray]) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self._send()

    def _send(self) -> None:
        status, reasons = self.status, self.reasons
        outs: list[tuple[np.ndarray, np.ndarray]] = []
        for idx, future in self.groups:
            if future.cancelled() or future.exception() is not None:
                why = "cancelled" if future.cancelled() else str(future.exception())
                status[idx] = _ERROR
                reasons.update(dict.fromkeys(idx.tolist(), why))
                continue
            out = future.result()
            finite = np.isfinite(out).all(axis=1)
            if not finite.all():
                status[idx[~finite]] = _ERROR
                reasons.update(dict.fromkeys(idx[~finite].tolist(),
                                             "the model produced non-finite output; state "
                                             "reset"))
                idx, out = idx[finite], out[finite]
            outs.append((idx, out))
        if len(outs) == 1:
            samples = outs[0][1].reshape(-1)
        elif outs:  # several entry sizes in one TICK (rare): put the rows back in entry order
            rows = sorted((int(i), row) for idx, out in outs for i, row in zip(idx, out,
                                                                             strict=True))
            samples = np.concatenate([row for _, row in rows]) if rows \
                else np.zeros(0, np.float32)  # every output was non-finite
        else:
            samples = np.zeros(0, np.float32)
        has = self.has
        out_status = status[has]
        sizes = np.where(out_status == _OK, self.tick.sizes[has], 0).astype(np.uint32)
        order = np.flatnonzero(has)
        bad = [reasons[int(i)] for i in order[out_status != _OK]]
        for code, count in enumerate(np.bincount(out_status, minlength=len(_NAMES))):
            if count:
                self.counts[_NAMES[code]] += int(count)
        if not self.writer.is_closing():
            for part in bulk_result_parts(self.tick.seq, self.tick.handles[has], sizes,
                                          out_status, samples, bad):
                if len(part):
                    self.writer.write(part)
