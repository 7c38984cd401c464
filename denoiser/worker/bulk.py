"""The bulk layout of TICK and RESULT (`BULK_LAYOUT`): columns, decoded in bulk.

A worker that handles 10,000 streams has about 2 us of Python per stream-frame. The records
layout decodes one record (a string, a flag byte, an array) per entry; here a TICK is a handful of
numpy views over the payload, whatever the number of entries:

    TICK    seq u32, n u32, handles u32[n], sizes u32[n] (samples), flags u8[n], pad to 4,
            samples f32[sum(sizes)] (entry after entry)
    RESULT  seq u32, n u32, handles u32[n], sizes u32[n] (0 unless OK), status u8[n],
            pad to 4, samples f32[sum(sizes)], then one u16-prefixed UTF-8 reason per
            entry whose status is not OK, in entry order

A handle is the node's small integer for a stream on this connection (below `MAX_HANDLE`),
the worker's index into its table of slots. The rules are the records layout's: an entry
carries samples (a whole number of hops, OPEN on a stream's first one) or is exactly CLOSE without;
a handle appears at most once per TICK; a RESULT answers every TICK entry that carried
samples. Every count, size and offset is checked before anything is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from denoiser.worker.protocol import (
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    MAX_TEXT_BYTES,
    PROTOCOL_VERSION,
    Flags,
    MessageType,
    ProtocolError,
    Status,
    _message,
)

MAX_BULK_ENTRIES = 16_384
MAX_HANDLE = 1 << 17  # handles per connection: more streams than one node will hold
_HEAD = struct.Struct("<II")
_U16 = struct.Struct("<H")
_FLAG_MASK = int(Flags.OPEN | Flags.CLOSE)
_STATUS_MAX = max(int(s) for s in Status)


@dataclass(frozen=True)
class BulkTick:
    """A decoded TICK: views over its payload (read-only), one array per column."""

    seq: int
    handles: np.ndarray  # uint32[n]
    sizes: np.ndarray  # uint32[n], samples per entry
    flags: np.ndarray  # uint8[n]
    samples: np.ndarray  # float32[sum(sizes)]

    @property
    def count(self) -> int:
        return int(self.handles.size)


@dataclass(frozen=True)
class BulkResult:
    seq: int
    handles: np.ndarray  # uint32[n]
    sizes: np.ndarray  # uint32[n]
    status: np.ndarray  # uint8[n]
    samples: np.ndarray  # float32[sum(sizes)]
    reasons: list[str]  # one per entry whose status is not OK, in order

    @property
    def count(self) -> int:
        return int(self.handles.size)


def _pad(n: int) -> int:
    return -n % 4


def _columns(seq: int, handles: np.ndarray, sizes: np.ndarray, bytes_col: np.ndarray,
             samples: np.ndarray, tail: bytes = b"") -> bytes:
    n = handles.size
    if n > MAX_BULK_ENTRIES:
        raise ProtocolError(f"{n} entries exceed {MAX_BULK_ENTRIES}")
    if sizes.size != n or bytes_col.size != n:
        raise ProtocolError("columns of different lengths")
    if int(sizes.sum(dtype=np.int64)) != samples.size:
        raise ProtocolError(f"sizes add up to {int(sizes.sum())}, not {samples.size} samples")
    return b"".join((_HEAD.pack(seq, n), handles.astype("<u4", copy=False).tobytes(),
                     sizes.astype("<u4", copy=False).tobytes(),
                     bytes_col.astype(np.uint8, copy=False).tobytes(), b"\0" * _pad(n),
                     np.ascontiguousarray(samples, dtype="<f4").tobytes(), tail))


def encode_bulk_tick(seq: int, handles: np.ndarray, sizes: np.ndarray, flags: np.ndarray,
                     samples: np.ndarray) -> bytes:
    if handles.size and int(handles.max()) >= MAX_HANDLE:
        raise ProtocolError(f"handle {int(handles.max())} is not below {MAX_HANDLE}")
    return _message(MessageType.TICK, _columns(seq, handles, sizes, flags, samples))


def encode_bulk_result(seq: int, handles: np.ndarray, sizes: np.ndarray, status: np.ndarray,
                       samples: np.ndarray, reasons: list[str]) -> bytes:
    return b"".join(bulk_result_parts(seq, handles, sizes, status, samples, reasons))


def bulk_result_parts(seq: int, handles: np.ndarray, sizes: np.ndarray, status: np.ndarray,
                      samples: np.ndarray, reasons: list[str]
                      ) -> tuple[bytes, memoryview, bytes]:
    """A RESULT as (header and columns, the samples' own memory, reasons): written one after
    the other, its megabytes of samples are never joined into a new bytes object."""
    n = handles.size
    if len(reasons) != int(np.count_nonzero(status != Status.OK)):
        raise ProtocolError("one reason per entry that is not OK")
    if n > MAX_BULK_ENTRIES:
        raise ProtocolError(f"{n} entries exceed {MAX_BULK_ENTRIES}")
    if sizes.size != n or status.size != n:
        raise ProtocolError("columns of different lengths")
    data = np.ascontiguousarray(samples, dtype="<f4").reshape(-1)
    if int(sizes.sum(dtype=np.int64)) != data.size:
        raise ProtocolError(f"sizes add up to {int(sizes.sum())}, not {data.size} samples")
    tail = b"".join(_reason(r) for r in reasons)
    columns = b"".join((_HEAD.pack(seq, n), handles.astype("<u4", copy=False).tobytes(),
                        sizes.astype("<u4", copy=False).tobytes(),
                        status.astype(np.uint8, copy=False).tobytes(), b"\0" * _pad(n)))
    length = len(columns) + 4 * data.size + len(tail)
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"RESULT payload of {length} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, MessageType.RESULT, length)
    return head + columns, memoryview(data.data).cast("B"), tail


def _reason(reason: str) -> bytes:
    raw = reason[:MAX_TEXT_BYTES // 4].encode("utf-8")[:MAX_TEXT_BYTES]
    return _U16.pack(len(raw)) + raw


def _split(payload: bytes | memoryview) -> tuple[int, np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray, int]:
    """(seq, handles, sizes, byte column, samples, offset after the samples), all bounds
    checked."""
    data = memoryview(payload)
    if len(data) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
    if len(data) < _HEAD.size:
        raise ProtocolError(f"truncated message: {len(data)} bytes, no room for its head")
    seq, n = _HEAD.unpack_from(data)
    if n > MAX_BULK_ENTRIES:
        raise ProtocolError(f"{n} entries exceed {MAX_BULK_ENTRIES}")
    columns_end = _HEAD.size + 9 * n + _pad(n)
    if columns_end > len(data):
        raise ProtocolError(f"truncated message: {n} entries need {columns_end} bytes of "
                            f"columns, {len(data)} in all")
    handles = np.frombuffer(data, "<u4", n, _HEAD.size)
    sizes = np.frombuffer(data, "<u4", n, _HEAD.size + 4 * n)
    column = np.frombuffer(data, np.uint8, n, _HEAD.size + 8 * n)
    total = int(sizes.sum(dtype=np.int64))
    end = columns_end + 4 * total
    if end > len(data):
        raise ProtocolError(f"truncated message: {total} samples need {end} bytes, "
                            f"{len(data)} in all")
    samples = np.frombuffer(data, "<f4", total, columns_end)
    if handles.size and int(handles.max()) >= MAX_HANDLE:
        raise ProtocolError(f"handle {int(handles.max())} is not below {MAX_HANDLE}")
    return seq, handles, sizes, column, samples, end


def decode_bulk_tick(payload: bytes | memoryview) -> BulkTick:
    seq, handles, sizes, flags, samples, end = _split(payload)
    if end != len(payload):
        raise ProtocolError(f"{len(payload) - end} unexpected bytes at the end")
    if np.any(flags & ~np.uint8(_FLAG_MASK)):
        bad = int(flags[np.flatnonzero(flags & ~np.uint8(_FLAG_MASK))[0]])
        raise ProtocolError(f"unknown flags {bad:#x}")
    close_only = flags == Flags.CLOSE
    if np.any(close_only != (sizes == 0)):
        i = int(np.flatnonzero(close_only != (sizes == 0))[0])
        raise ProtocolError(f"handle {int(handles[i])}: an entry carries samples, or is exactly "
                            f"CLOSE without them (flags {int(flags[i])}, {int(sizes[i])} "
                            "samples)")
    if handles.size > 1:
        # One entry per handle: mark each handle with its position and read the marks back.
        marks = np.zeros(int(handles.max()) + 1, np.int64)
        order = np.arange(handles.size)
        marks[handles] = order
        if np.any(marks[handles] != order):
            raise ProtocolError("a handle appears twice in one TICK")
    return BulkTick(seq, handles, sizes, flags, samples)


def decode_bulk_result(payload: bytes | memoryview) -> BulkResult:
    seq, handles, sizes, status, samples, offset = _split(payload)
    if status.size and int(status.max()) > _STATUS_MAX:
        raise ProtocolError(f"unknown status {int(status.max())}")
    if np.any((status != Status.OK) & (sizes != 0)):
        raise ProtocolError("an entry that is not OK carries samples")
    data = memoryview(payload)
    reasons = []
    for _ in range(int(np.count_nonzero(status != Status.OK))):
        if offset + 2 > len(data):
            raise ProtocolError("truncated message: a reason is missing")
        (size,) = _U16.unpack_from(data, offset)
        offset += 2
        if size > MAX_TEXT_BYTES or offset + size > len(data):
            raise ProtocolError("truncated or oversized reason")
        try:
            reasons.append(bytes(data[offset:offset + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError("a string is not valid UTF-8") from None
        offset += size
    if offset != len(data):
        raise ProtocolError(f"{len(data) - offset} unexpected bytes at the end")
    return BulkResult(seq, handles, sizes, status, samples, reasons)
