"""The worker's binary wire format: length-prefixed messages over one TCP connection per node.

Every message is a 10-byte header, `<4sBBI` (magic `DNSW`, protocol version, message type,
payload length), then the payload. All integers and samples are little-endian; samples are
float32 at 48 kHz. Strings are UTF-8 with a length prefix.

    HELLO    node -> worker   node name, token (empty, or `denoiser.worker.auth.hello_token`)
    WELCOME  worker -> node   sample rate, hop, latency (samples), stream slots, description
    TICK     node -> worker   seq, then per stream: id, flags (OPEN: fresh state; CLOSE), samples
    RESULT   worker -> node   seq, then per stream that sent samples: id, status, samples or reason
    ERROR    worker -> node   why the worker is closing this connection (a protocol violation)

Two layouts of TICK and RESULT share these messages, told apart by the header's version, which
the node picks with its HELLO and the worker answers in (every later message of the
connection must carry the same one):
- version 1: one record per entry (a string id, flags, samples), decoded entry by entry;
- version 2 (`denoiser.worker.bulk`): columns. A small integer handle per stream instead of a
  string, then all handles, all sizes, all flags, then every entry's samples back to back,
  so that the worker decodes a TICK of thousands of streams with a few numpy views and hands
  the engine one array, not one object per entry. HELLO, WELCOME and ERROR are the same in both.
A worker of this code serves both; a node tries version 2 and falls back to 1 when an older
worker refuses it.

A node sends one TICK per batch of hops it has ready (every stream's hops of that moment); the
worker answers each TICK with one RESULT carrying the same seq. A TICK entry either carries
samples (a whole number of hops; with OPEN on a stream's first entry, or to start it afresh) or
is exactly CLOSE with none. Every decoder bounds what it reads and raises `ProtocolError` on
anything malformed; nothing is trusted because it came over a socket.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"DNSW"
VERSION = 1  # the per-entry layout (and what HELLO defaults to)
BULK_VERSION = 2  # the columnar TICK/RESULT (`denoiser.worker.bulk`)
VERSIONS = (VERSION, BULK_VERSION)
HEADER = struct.Struct("<4sBBI")
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_ENTRIES = 4096
MAX_ID_BYTES = 255
MAX_TEXT_BYTES = 1024

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SEQ_COUNT = struct.Struct("<IH")
_WELCOME = struct.Struct("<IIII")
_SAMPLE = np.dtype("<f4")


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


class MessageType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    TICK = 3
    RESULT = 4
    ERROR = 5


class Flags(enum.IntFlag):
    NONE = 0
    OPEN = 1  # start this stream with fresh state (its first entry, or a restart)
    CLOSE = 2  # the stream is gone; free its slot


class Status(enum.IntEnum):
    OK = 0
    FULL = 1  # no free slot on the worker: pass through, try again later
    UNKNOWN = 2  # the worker has no such stream (it restarted): send OPEN again
    ERROR = 3  # this entry could not be denoised (reason given)


@dataclass(frozen=True)
class Welcome:
    sample_rate: int
    hop_size: int
    latency_samples: int
    max_streams: int
    description: str


@dataclass(frozen=True)
class TickEntry:
    stream_id: str
    flags: Flags
    samples: np.ndarray  # float32; empty exactly when flags == CLOSE


@dataclass(frozen=True)
class ResultEntry:
    stream_id: str
    status: Status
    samples: np.ndarray | None = None  # when OK
    reason: str = ""  # otherwise


@dataclass(frozen=True)
class Header:
    type: MessageType
    length: int
    version: int = VERSION


# -- encoding ------------------------------------------------------------------------------

def _message(kind: MessageType, payload: bytes, version: int = VERSION) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"{kind.name} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, version, kind, len(payload)) + payload


def _text(value: str, limit: int, width: struct.Struct) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise ProtocolError(f"text of {len(raw)} bytes exceeds {limit}")
    return width.pack(len(raw)) + raw


def _stream_id(value: str) -> bytes:
    if not value:
        raise ProtocolError("empty stream id")
    return _text(value, MAX_ID_BYTES, _U8)


def _samples(samples: np.ndarray) -> bytes:
    data = np.ascontiguousarray(samples, dtype=_SAMPLE)
    if data.ndim != 1:
        raise ProtocolError(f"samples must be 1-D, got shape {samples.shape}")
    return _U32.pack(data.size) + data.tobytes()


def encode_hello(node: str, token: str = "", version: int = VERSION) -> bytes:
    """HELLO in the layout version the node asks for (the worker answers in it)."""
    if version not in VERSIONS:
        raise ProtocolError(f"protocol version {version} is not one of {VERSIONS}")
    return _message(MessageType.HELLO, _text(node, MAX_TEXT_BYTES, _U16)
                    + _text(token, MAX_TEXT_BYTES, _U16), version)


def encode_welcome(welcome: Welcome, version: int = VERSION) -> bytes:
    return _message(MessageType.WELCOME, _WELCOME.pack(
        welcome.sample_rate, welcome.hop_size, welcome.latency_samples, welcome.max_streams)
        + _text(welcome.description, MAX_TEXT_BYTES, _U16), version)


def encode_tick(seq: int, entries: list[TickEntry]) -> bytes:
    if len(entries) > MAX_ENTRIES:
        raise ProtocolError(f"{len(entries)} entries exceed {MAX_ENTRIES}")
    parts = [_SEQ_COUNT.pack(seq, len(entries))]
    for entry in entries:
        parts += [_stream_id(entry.stream_id), _U8.pack(entry.flags), _samples(entry.samples)]
    return _message(MessageType.TICK, b"".join(parts))


def encode_result(seq: int, entries: list[ResultEntry]) -> bytes:
    if len(entries) > MAX_ENTRIES:
        raise ProtocolError(f"{len(entries)} entries exceed {MAX_ENTRIES}")
    parts = [_SEQ_COUNT.pack(seq, len(entries))]
    for entry in entries:
        parts += [_stream_id(entry.stream_id), _U8.pack(entry.status)]
        if entry.status is Status.OK:
            assert entry.samples is not None
            parts.append(_samples(entry.samples))
        else:
            parts.append(_text(entry.reason[:MAX_TEXT_BYTES // 4], MAX_TEXT_BYTES, _U16))
    return _message(MessageType.RESULT, b"".join(parts))


def encode_error(reason: str, version: int = VERSION) -> bytes:
    return _message(MessageType.ERROR, _text(reason[:MAX_TEXT_BYTES // 4], MAX_TEXT_BYTES, _U16),
                    version)


# -- decoding ------------------------------------------------------------------------------

def decode_header(data: bytes) -> Header:
    """The header of a message; the caller then reads exactly `length` payload bytes."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"header must be {HEADER.size} bytes, got {len(data)}")
    magic, version, kind, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a denoise-sfu worker connection")
    if version not in VERSIONS:
        raise ProtocolError(f"protocol version {version} is not supported (this speaks "
                            f"{', '.join(map(str, VERSIONS))})")
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise ProtocolError(f"unknown message type {kind}") from None
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return Header(message_type, length, version)


class _Reader:
    """Bounds-checked reads from one payload."""

    def __init__(self, payload: bytes) -> None:
        self.data = memoryview(payload)
        self.offset = 0

    def take(self, size: int) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise ProtocolError(f"truncated message: wanted {size} bytes at offset "
                                f"{self.offset}, {len(self.data) - self.offset} left")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))

    def text(self, width: struct.Struct) -> str:
        (size,) = self.unpack(width)
        try:
            return bytes(self.take(size)).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a string is not valid UTF-8") from None

    def stream_id(self) -> str:
        value = self.text(_U8)
        if not value:
            raise ProtocolError("empty stream id")
        return value

    def samples(self) -> np.ndarray:
        (count,) = self.unpack(_U32)
        raw = self.take(count * _SAMPLE.itemsize)
        return np.frombuffer(raw, dtype=_SAMPLE).astype(np.float32)  # a copy we own

    def seq_and_count(self) -> tuple[int, int]:
        """The head of a TICK or RESULT: its seq and how many entries follow (bounded)."""
        seq, count = self.unpack(_SEQ_COUNT)
        if count > MAX_ENTRIES:
            raise ProtocolError(f"{count} entries exceed {MAX_ENTRIES}")
        return seq, count

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.offset} unexpected bytes at the end")


def decode_hello(payload: bytes) -> tuple[str, str]:
    """(node name, token)."""
    reader = _Reader(payload)
    node = reader.text(_U16)
    token = reader.text(_U16)
    reader.finish()
    return node, token


def decode_welcome(payload: bytes) -> Welcome:
    reader = _Reader(payload)
    sample_rate, hop_size, latency, max_streams = reader.unpack(_WELCOME)
    description = reader.text(_U16)
    reader.finish()
    if sample_rate <= 0 or hop_size <= 0:
        raise ProtocolError(f"bad audio format: {sample_rate} Hz, hop {hop_size}")
    return Welcome(sample_rate, hop_size, latency, max_streams, description)


def decode_tick(payload: bytes) -> tuple[int, list[TickEntry]]:
    reader = _Reader(payload)
    seq, count = reader.seq_and_count()
    entries = []
    for _ in range(count):
        stream_id = reader.stream_id()
        (raw_flags,) = reader.unpack(_U8)
        if raw_flags & ~int(Flags.OPEN | Flags.CLOSE):
            raise ProtocolError(f"unknown flags {raw_flags:#x} for stream {stream_id!r}")
        flags = Flags(raw_flags)
        samples = reader.samples()
        if (flags == Flags.CLOSE) != (samples.size == 0):
            raise ProtocolError(f"stream {stream_id!r}: an entry carries samples, or is exactly "
                                f"CLOSE without them (flags {raw_flags}, {samples.size} samples)")
        entries.append(TickEntry(stream_id, flags, samples))
    reader.finish()
    return seq, entries


def decode_result(payload: bytes) -> tuple[int, list[ResultEntry]]:
    reader = _Reader(payload)
    seq, count = reader.seq_and_count()
    entries = []
    for _ in range(count):
        stream_id = reader.stream_id()
        (raw_status,) = reader.unpack(_U8)
        try:
            status = Status(raw_status)
        except ValueError:
            raise ProtocolError(f"unknown status {raw_status} for {stream_id!r}") from None
        if status is Status.OK:
            entries.append(ResultEntry(stream_id, status, samples=reader.samples()))
        else:
            entries.append(ResultEntry(stream_id, status, reason=reader.text(_U16)))
    reader.finish()
    return seq, entries


def decode_error(payload: bytes) -> str:
    reader = _Reader(payload)
    reason = reader.text(_U16)
    reader.finish()
    return reason


async def read_message(reader: asyncio.StreamReader) -> tuple[MessageType, bytes]:
    """The next whole message from a stream (IncompleteReadError when it ends mid-message)."""
    header = decode_header(await reader.readexactly(HEADER.size))
    return header.type, await reader.readexactly(header.length)


async def read_versioned(reader: asyncio.StreamReader) -> tuple[int, MessageType, bytes]:
    """`read_message` with the header's layout version."""
    header = decode_header(await reader.readexactly(HEADER.size))
    return header.version, header.type, await reader.readexactly(header.length)
