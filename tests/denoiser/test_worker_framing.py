"""`MessageReader`: worker messages read with recv_into after a handshake, over real loopback
TCP. Whatever way the bytes are split by the network, every message arrives whole and in
order (small ones from the staging buffer, large ones in their own), what came before the
take-over is not lost, the limits hold, and the connection's StreamWriter still works."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from denoiser.worker import framing
from denoiser.worker import protocol as wire
from denoiser.worker.framing import MessageReader
from denoiser.worker.protocol import MessageType, ProtocolError, TooLarge

Handler = Callable[[MessageReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler, *, max_payload: int = wire.MAX_PAYLOAD,
                 before: int = 0, queue_limit: int = framing.QUEUE_LIMIT
                 ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A loopback server that reads `before` messages with read_message (the handshake's way),
    then hands the connection to MessageReader and `handler`; yields a client connection."""
    done: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(before):
            await wire.read_message(reader)
        messages = MessageReader.take_over(reader, writer, max_payload, queue_limit)
        try:
            await handler(messages, writer)
        finally:
            writer.close()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        done.append(task)
        await serve(reader, writer)

    srv = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        srv.close()
        await srv.wait_closed()
        for task in done:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


def message(kind: MessageType, size: int, seed: int) -> bytes:
    return wire._message(kind, random.Random(seed).randbytes(size))


SIZES = [0, 8, 1000, framing.STAGING_BYTES - wire.HEADER.size, framing.STAGING_BYTES - 9,
         framing.STAGING_BYTES + 1, 3_000_000, 17, wire.MAX_PAYLOAD, 5]


async def test_every_message_arrives_whole_and_in_order_however_the_bytes_are_split() -> None:
    got: list[tuple[MessageType, bytes]] = []

    async def handler(messages: MessageReader, writer: asyncio.StreamWriter) -> None:
        for _ in SIZES:
            kind, payload = await messages.read()
            got.append((kind, bytes(payload)))
            if len(payload) > framing.STAGING_BYTES:  # its own buffer, read-only
                assert isinstance(payload, memoryview) and payload.readonly

    wanted = [message(MessageType.TICK if i % 2 else MessageType.PING, size, i)
              for i, size in enumerate(SIZES)]
    stream = b"".join(wanted)
    async with server(handler) as (_, writer):
        rng = random.Random(7)
        i = 0
        while i < len(stream):  # pieces of 1 byte to 1 MB, some with pauses between them
            n = rng.choice([1, 3, 10, 11, 4096, 70_000, 1_000_000])
            writer.write(stream[i:i + n])
            i += n
            if rng.random() < 0.2:
                await writer.drain()
                await asyncio.sleep(0.001)
        await writer.drain()
        for _ in range(500):
            if len(got) == len(SIZES):
                break
            await asyncio.sleep(0.01)
    assert [(k, len(p)) for k, p in got] == [(wire.decode_header(m[:wire.HEADER.size]).type,
                                              len(m) - wire.HEADER.size) for m in wanted]
    assert [p for _, p in got] == [m[wire.HEADER.size:] for m in wanted]


async def test_bytes_sent_before_the_take_over_are_not_lost() -> None:
    got: list[bytes] = []

    async def handler(messages: MessageReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            got.append(bytes((await messages.read())[1]))

    first = message(MessageType.HELLO, 40, 1)
    rest = [message(MessageType.TICK, 500, 2), message(MessageType.TICK, 600_000, 3),
            message(MessageType.PING, 8, 4)]
    async with server(handler, before=1) as (_, writer):
        writer.write(first + b"".join(rest))  # one write: the StreamReader buffers past HELLO
        await writer.drain()
        for _ in range(500):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
    assert got == [m[wire.HEADER.size:] for m in rest]


async def test_a_header_over_the_limit_is_refused_before_its_payload_is_read() -> None:
    errors: list[BaseException] = []

    async def handler(messages: MessageReader, writer: asyncio.StreamWriter) -> None:
        assert (await messages.read())[0] is MessageType.PING
        try:
            await messages.read()
        except ProtocolError as exc:
            errors.append(exc)
        writer.write(wire.encode_error(str(errors[-1])))  # the writer still works
        await writer.drain()

    async with server(handler, max_payload=1000) as (reader, writer):
        header = wire.HEADER.pack(wire.MAGIC, wire.PROTOCOL_VERSION, MessageType.TICK, 1001)
        writer.write(message(MessageType.PING, 8, 0) + header)
        await writer.drain()
        kind, payload = await asyncio.wait_for(wire.read_message(reader), 5)
    assert kind is MessageType.ERROR and "1001 bytes exceeds the 1000" in wire.decode_error(payload)
    assert isinstance(errors[0], TooLarge)


async def test_bad_magic_is_a_protocol_error() -> None:
    errors: list[BaseException] = []

    async def handler(messages: MessageReader, writer: asyncio.StreamWriter) -> None:
        with pytest.raises(ProtocolError, match="bad magic") as info:
            await messages.read()
        errors.append(info.value)

    async with server(handler) as (_, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        for _ in range(300):
            if errors:
                break
            await asyncio.sleep(0.01)
    assert errors


@pytest.mark.parametrize("size", [100, 2_000_000])
async def test_a_peer_gone_mid_message_ends_the_read(size: int) -> None:
    ended: list[BaseException] = []

    async def handler(messages: MessageReader, writer: asyncio.StreamWriter) -> None:
        try:
            await messages.read()
        except asyncio.IncompleteReadError as exc:
            ended.append(exc)

    async with server(handler) as (_, writer):
        writer.write(message(MessageType.TICK, size, 0)[:-1])
        await writer.drain()
        writer.close()
        for _ in range(300):
            if ended:
                break
            await asyncio.sleep(0.01)
    assert ended


async def test_a_consumer_that_stops_reading_stops_the_socket_being_read() -> None:
    """At most `queue_limit` whole messages wait; the rest stay in the kernel's buffers."""
    state: dict[str, object] = {}
    go = asyncio.Event()

    async def handler(messages: MessageReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)  # the client has sent 40 MB by now, or tried to
        state["waiting"] = len(messages._ready)
        state["reading"] = writer.transport.is_reading()  # type: ignore[attr-defined]
        go.set()
        count = 0
        while count < 20:
            await messages.read()
            count += 1
        state["count"] = count

    big = message(MessageType.TICK, 2_000_000, 0)
    async with server(handler, queue_limit=2) as (_, writer):
        for _ in range(20):
            writer.write(big)
        await asyncio.wait_for(go.wait(), 5)
        await asyncio.wait_for(writer.drain(), 10)
        for _ in range(500):
            if "count" in state:
                break
            await asyncio.sleep(0.01)
    assert state["waiting"] == 2 and state["reading"] is False
    assert state["count"] == 20
