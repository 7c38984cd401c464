"""The worker's binary wire format: length-prefixed messages over one TCP connection per node.

Every message is a 10-byte header, `<4sBBI` (magic `DNSW`, protocol version, message type,
payload length), then the payload. All integers and samples are little-endian; samples are
float32 at 48 kHz. Strings are UTF-8 with a length prefix.

    HELLO      node -> worker   node name, TICK/RESULT layout it will use
    CHALLENGE  worker -> node   32 random bytes (a fresh nonce per connection), secret needed?
    AUTH       node -> worker   HMAC-SHA256(secret, nonce, name, version, layout), or empty
    WELCOME    worker -> node   sample rate, hop, latency (samples), stream slots, heartbeat
                                timeout (ms), description
    TICK       node -> worker   seq, then per stream: id, flags (OPEN: fresh state; CLOSE), samples
    RESULT     worker -> node   seq, then per stream that sent samples: id, status, samples/reason
    PING       node -> worker   8 opaque bytes, at least every quarter heartbeat timeout
    PONG       worker -> node   the PING's 8 bytes, back
    ERROR      worker -> node   why the worker is closing this connection (a protocol violation)

Protocol version 3 (`PROTOCOL_VERSION`, in every header) is the challenge-response handshake
(`denoiser.worker.handshake`: HELLO, CHALLENGE, AUTH, WELCOME) and the heartbeat; a peer of
another version gets an ERROR that says so, and neither side falls back (versions 1 and 2 had
a replayable token in HELLO). Two layouts of TICK and RESULT share these messages, chosen by
the node in its HELLO:
- `RECORDS_LAYOUT` (1): one record per entry (a string id, flags, samples), decoded entry by
  entry;
- `BULK_LAYOUT` (2, `denoiser.worker.bulk`): columns. A small integer handle per stream
  instead of a string, then all handles, all sizes, all flags, then every entry's samples back
  to back, so that the worker decodes a TICK of thousands of streams with a few numpy views
  and hands the engine one array, not one object per entry.
A worker of this code serves both; a node uses the bulk layout.

A node sends one TICK per batch of hops it has ready (every stream's hops of that moment); the
worker answers each TICK with one RESULT carrying the same seq. A TICK entry either carries
samples (a whole number of hops; with OPEN on a stream's first entry, or to start it afresh) or
is exactly CLOSE with none. Every decoder bounds what it reads and raises `ProtocolError` on
anything malformed; nothing is trusted because it came over a socket. Before the AUTH is
checked, a message may hold at most `MAX_HANDSHAKE_PAYLOAD` bytes.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"DNSW"
PROTOCOL_VERSION = 3  # nonce handshake, heartbeat; both layouts (see the docstring)
RECORDS_LAYOUT = 1  # per-entry TICK/RESULT
BULK_LAYOUT = 2  # the columnar TICK/RESULT (`denoiser.worker.bulk`)
LAYOUTS = (RECORDS_LAYOUT, BULK_LAYOUT)
HEADER = struct.Struct("<4sBBI")
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_HANDSHAKE_PAYLOAD = 2048  # any message of the handshake (before the AUTH is checked)
NONCE_BYTES = 32
MAC_BYTES = 32
MAX_NODE_NAME_BYTES = 255
MAX_ENTRIES = 4096
MAX_ID_BYTES = 255
MAX_TEXT_BYTES = 1024

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SEQ_COUNT = struct.Struct("<IH")
_WELCOME = struct.Struct("<IIIII")
_PING = struct.Struct("<Q")
_SAMPLE = np.dtype("<f4")


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


class VersionMismatch(ProtocolError):
    """A message of another protocol version (a node or worker of another release)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class TooLarge(ProtocolError):
    """A message longer than what may be read at this point (before authentication, say)."""


class MessageType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    TICK = 3
    RESULT = 4
    ERROR = 5
    CHALLENGE = 6
    AUTH = 7
    PING = 8
    PONG = 9


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
    heartbeat_ms: int = 5000  # the worker drops a node it has not heard from for this long


@dataclass(frozen=True)
class Hello:
    node: str
    layout: int


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    secret_required: bool


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
    version: int = PROTOCOL_VERSION


# -- encoding ------------------------------------------------------------------------------

def _message(kind: MessageType, payload: bytes, version: int = PROTOCOL_VERSION) -> bytes:
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


def encode_hello(node: str, layout: int = BULK_LAYOUT) -> bytes:
    """HELLO: who the node is and the TICK/RESULT layout it will send (the worker answers in
    it)."""
    if layout not in LAYOUTS:
        raise ProtocolError(f"layout {layout} is not one of {LAYOUTS}")
    return _message(MessageType.HELLO, _text(node, MAX_NODE_NAME_BYTES, _U16)
                    + _U8.pack(layout))


def encode_challenge(nonce: bytes, secret_required: bool) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ProtocolError(f"a nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    return _message(MessageType.CHALLENGE, nonce + _U8.pack(int(secret_required)))


def encode_auth(mac: bytes) -> bytes:
    if len(mac) not in (0, MAC_BYTES):
        raise ProtocolError(f"a MAC is {MAC_BYTES} bytes (or none), not {len(mac)}")
    return _message(MessageType.AUTH, _U8.pack(len(mac)) + mac)


def encode_welcome(welcome: Welcome) -> bytes:
    return _message(MessageType.WELCOME, _WELCOME.pack(
        welcome.sample_rate, welcome.hop_size, welcome.latency_samples, welcome.max_streams,
        welcome.heartbeat_ms) + _text(welcome.description, MAX_TEXT_BYTES, _U16))


def encode_ping(token: int, kind: MessageType = MessageType.PING) -> bytes:
    return _message(kind, _PING.pack(token & 0xFFFFFFFFFFFFFFFF))


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


def encode_error(reason: str) -> bytes:
    return _message(MessageType.ERROR, _text(reason[:MAX_TEXT_BYTES // 4], MAX_TEXT_BYTES, _U16))


# -- decoding ------------------------------------------------------------------------------

def decode_header(data: bytes) -> Header:
    """The header of a message; the caller then reads exactly `length` payload bytes."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"header must be {HEADER.size} bytes, got {len(data)}")
    magic, version, kind, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a denoise-sfu worker connection")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version} is not supported: this side speaks version "
            f"{PROTOCOL_VERSION} (run SFU nodes and workers of the same release)", version)
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise ProtocolError(f"unknown message type {kind}") from None
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return Header(message_type, length, version)


class _Reader:
    """Bounds-checked reads from one payload."""

    def __init__(self, payload: bytes | memoryview) -> None:
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


def decode_hello(payload: bytes | memoryview) -> Hello:
    reader = _Reader(payload)
    node = reader.text(_U16)
    (layout,) = reader.unpack(_U8)
    reader.finish()
    if len(node.encode()) > MAX_NODE_NAME_BYTES:
        raise ProtocolError(f"node name over {MAX_NODE_NAME_BYTES} bytes")
    if layout not in LAYOUTS:
        raise ProtocolError(f"unknown TICK/RESULT layout {layout} (this speaks "
                            f"{', '.join(map(str, LAYOUTS))})")
    return Hello(node, layout)


def decode_challenge(payload: bytes | memoryview) -> Challenge:
    reader = _Reader(payload)
    nonce = bytes(reader.take(NONCE_BYTES))
    (required,) = reader.unpack(_U8)
    reader.finish()
    return Challenge(nonce, bool(required))


def decode_auth(payload: bytes | memoryview) -> bytes:
    reader = _Reader(payload)
    (size,) = reader.unpack(_U8)
    if size not in (0, MAC_BYTES):
        raise ProtocolError(f"a MAC is {MAC_BYTES} bytes (or none), not {size}")
    mac = bytes(reader.take(size))
    reader.finish()
    return mac


def decode_welcome(payload: bytes | memoryview) -> Welcome:
    reader = _Reader(payload)
    sample_rate, hop_size, latency, max_streams, heartbeat_ms = reader.unpack(_WELCOME)
    description = reader.text(_U16)
    reader.finish()
    if sample_rate <= 0 or hop_size <= 0:
        raise ProtocolError(f"bad audio format: {sample_rate} Hz, hop {hop_size}")
    if heartbeat_ms <= 0:
        raise ProtocolError("a heartbeat timeout of 0 ms")
    return Welcome(sample_rate, hop_size, latency, max_streams, description, heartbeat_ms)


def decode_ping(payload: bytes | memoryview) -> int:
    reader = _Reader(payload)
    (token,) = reader.unpack(_PING)
    reader.finish()
    return int(token)


def decode_tick(payload: bytes | memoryview) -> tuple[int, list[TickEntry]]:
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


def decode_result(payload: bytes | memoryview) -> tuple[int, list[ResultEntry]]:
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


def decode_error(payload: bytes | memoryview) -> str:
    reader = _Reader(payload)
    reason = reader.text(_U16)
    reader.finish()
    return reason


async def read_message(reader: asyncio.StreamReader, max_payload: int = MAX_PAYLOAD
                       ) -> tuple[MessageType, bytes]:
    """The next whole message from a stream (IncompleteReadError when it ends mid-message). A
    header that declares more than `max_payload` bytes is refused before any of them is read."""
    header = decode_header(await reader.readexactly(HEADER.size))
    if header.length > max_payload:
        raise TooLarge(f"{header.type.name} of {header.length} bytes exceeds the "
                       f"{max_payload} allowed here")
    return header.type, await reader.readexactly(header.length)
