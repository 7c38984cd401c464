"""Worker messages read with `recv_into`: a large payload lands in a buffer of its own.

asyncio's `StreamReader` copies every byte it receives twice more (into its buffer, then out
with `readexactly`), and grows that buffer for every 8 MiB TICK. At 10,000 streams those copies
were a third of the worker's time (docs/benchmarks.md, "Worker host path"). Once a connection's
handshake is done, `MessageReader.take_over` moves its reading to a `BufferedProtocol`: small
messages (PING, a TICK of a few streams) are parsed out of one reused staging buffer, and a
payload larger than that buffer is received straight into a new array: one copy, the kernel's.

Writing is untouched: the connection's `StreamWriter` keeps its `StreamReaderProtocol`, to
which this protocol hands on the flow-control and connection-loss callbacks, so `drain()` and
`wait_closed()` behave as before. Reading is bounded like `read_message`: a header that declares
more than `max_payload` is refused before a byte of its payload is read, and at most
`queue_limit` whole messages wait for the consumer before the transport stops reading.
"""

from __future__ import annotations

import asyncio
import collections

import numpy as np

from denoiser.worker.protocol import HEADER, MessageType, ProtocolError, TooLarge, decode_header

STAGING_BYTES = 256 * 1024  # asyncio's own read size; payloads above it get their own buffer
QUEUE_LIMIT = 2  # whole messages read ahead of the consumer, at most

Message = tuple[MessageType, "bytes | memoryview"]


class MessageReader(asyncio.BufferedProtocol):
    """The reading side of one connection after its handshake (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol,
                 max_payload: int, queue_limit: int = QUEUE_LIMIT) -> None:
        self._transport = transport
        self._previous = previous
        self._max_payload = max_payload
        self._queue_limit = queue_limit
        self._staging = bytearray(STAGING_BYTES)
        self._staged = 0  # bytes of `_staging` filled, not yet parsed
        self._big_view: memoryview | None = None  # the large payload being received (its array)
        self._big_have = 0
        self._big_kind = MessageType.PING
        self._ready: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._paused = False

    @classmethod
    def take_over(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  max_payload: int, queue_limit: int = QUEUE_LIMIT) -> MessageReader:
        """Move `reader`'s connection to a new MessageReader, with what `reader` had buffered."""
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        previous = transport.get_protocol()
        protocol = cls(transport, previous, max_payload, queue_limit)
        # What the peer sent after the handshake's last message (a node may send at once).
        buffered: bytearray = reader._buffer  # type: ignore[attr-defined]  # no public way
        leftover = bytes(buffered)
        buffered.clear()
        transport.set_protocol(protocol)
        if leftover:
            protocol._feed(leftover)
        if reader.at_eof() or transport.is_closing():
            protocol._closed = True
        elif not transport.is_reading() and not protocol._paused:
            transport.resume_reading()  # paused by the StreamReader's own flow control
        return protocol

    # -- the consumer --------------------------------------------------------------------------

    async def read(self) -> Message:
        """The next whole message: ProtocolError on a malformed or oversized one,
        IncompleteReadError when the connection ends (mid-message or between messages)."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise asyncio.IncompleteReadError(b"", None)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._ready.popleft()
        if self._paused and len(self._ready) < self._queue_limit and self._error is None:
            self._paused = False
            self._transport.resume_reading()
        return message

    # -- BufferedProtocol ------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big_view is not None:
            return self._big_view[self._big_have:]
        return memoryview(self._staging)[self._staged:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big_view is not None:
            self._big_have += nbytes
            if self._big_have == len(self._big_view):
                payload = self._big_view.toreadonly()
                self._big_view = None
                self._deliver((self._big_kind, payload))
            return
        self._staged += nbytes
        self._parse()

    def _feed(self, data: bytes) -> None:
        """Bytes received before the take-over, as if they had just arrived."""
        view = memoryview(data)
        while view and not self._error:
            buffer = self.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _parse(self) -> None:
        """Every whole message in the staging buffer; a large payload's start moves to its
        own buffer, which the next reads fill."""
        data = memoryview(self._staging)
        start = 0
        while self._staged - start >= HEADER.size and self._error is None:
            try:
                header = decode_header(bytes(data[start:start + HEADER.size]))
                if header.length > self._max_payload:
                    raise TooLarge(f"{header.type.name} of {header.length} bytes exceeds the "
                                   f"{self._max_payload} allowed here")
            except ProtocolError as exc:
                self._fail(exc)
                return
            body = start + HEADER.size
            have = self._staged - body
            if header.length <= have:
                self._deliver((header.type, bytes(data[body:body + header.length])))
                start = body + header.length
            elif header.length > len(self._staging) - HEADER.size:
                self._big_view = np.empty(header.length, np.uint8).data  # no zero-fill
                self._big_view[:have] = data[body:self._staged]
                self._big_have, self._big_kind = have, header.type
                start = self._staged
                break
            else:
                break  # the rest of a small message is still to come
        if start:
            rest = self._staged - start
            self._staging[:rest] = self._staging[start:self._staged]
            self._staged = rest

    def _deliver(self, message: Message) -> None:
        self._ready.append(message)
        if len(self._ready) >= self._queue_limit and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if not self._paused:  # nothing more is read from a peer that broke the protocol
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the rest goes to the StreamWriter's protocol ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        pass  # taken over a live connection: never called

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()
        self._previous.connection_lost(exc)

    def eof_received(self) -> bool | None:
        self._closed = True
        self._wake()
        # StreamReaderProtocol: feeds its (now unused) reader's EOF; False closes the transport.
        return self._previous.eof_received()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()
