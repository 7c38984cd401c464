"""The bulk layout (columnar TICK/RESULT) and the engine's block path behind it.

Blocks give the same output as single streams, a bulk node and a records node share one worker
and both get the model's offline output, every malformed bulk message is refused with ERROR
(only its sender is dropped), a bad entry fails alone, and a node refuses a worker of another
protocol version with a clear error (no silent fallback)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch

from denoiser.engine import EngineError
from denoiser.engine.local import LocalEngine
from denoiser.model.identity import IdentityModel
from denoiser.worker import protocol as wire
from denoiser.worker.bulk import (
    MAX_HANDLE,
    decode_bulk_result,
    decode_bulk_tick,
    encode_bulk_result,
    encode_bulk_tick,
)
from denoiser.worker.client import RemoteEngine
from denoiser.worker.handshake import greet
from denoiser.worker.server import WorkerServer
from support.models import HOP, TinyConvGRU, audio, offline
from support.models import feed as feed_hops

torch.set_num_threads(1)
pytestmark = pytest.mark.timeout(60)
F = 2 * HOP  # one 20 ms frame


def _tick(handles: list[int], sizes: list[int], flags: list[int], seq: int = 1) -> bytes:
    samples = np.arange(sum(sizes), dtype=np.float32)
    return encode_bulk_tick(seq, np.array(handles, np.uint32), np.array(sizes, np.uint32),
                            np.array(flags, np.uint8), samples)


def test_bulk_tick_and_result_round_trip() -> None:
    message = _tick([3, 0, 7], [F, 0, HOP], [1, 2, 0], seq=42)
    header = wire.decode_header(message[:wire.HEADER.size])
    assert (header.version, header.type) == (wire.PROTOCOL_VERSION, wire.MessageType.TICK)
    tick = decode_bulk_tick(message[wire.HEADER.size:])
    assert tick.seq == 42 and tick.handles.tolist() == [3, 0, 7]
    assert tick.sizes.tolist() == [F, 0, HOP] and tick.flags.tolist() == [1, 2, 0]
    np.testing.assert_array_equal(tick.samples, np.arange(F + HOP, dtype=np.float32))
    result = encode_bulk_result(9, np.array([3, 7], np.uint32), np.array([F, 0], np.uint32),
                                np.array([0, 2], np.uint8), np.ones(F, np.float32), ["gone"])
    decoded = decode_bulk_result(result[wire.HEADER.size:])
    assert decoded.seq == 9 and decoded.status.tolist() == [0, 2]
    assert decoded.reasons == ["gone"] and decoded.samples.size == F


def _payload(message: bytes) -> bytes:
    return message[wire.HEADER.size:]


@pytest.mark.parametrize("payload, why", [
    (b"\x01\x00", "truncated"),
    (_payload(_tick([1], [F], [1]))[:-4], "truncated"),  # a sample short
    (_payload(_tick([1], [F], [1])) + b"\0\0\0\0", "unexpected bytes"),
    (_payload(_tick([1, 1], [F, F], [1, 1])), "twice"),
    (_payload(_tick([1], [F], [8])), "unknown flags"),
    (_payload(_tick([1], [F], [2])), "exactly CLOSE"),  # CLOSE with samples
    (_payload(_tick([1], [0], [0])), "exactly CLOSE"),  # nothing at all
    (struct.pack("<II", 1, 100_000), "exceed"),  # too many entries
    (struct.pack("<II", 1, 1) + struct.pack("<II", MAX_HANDLE, 0) + b"\x02\0\0\0",
     "not below"),
    (struct.pack("<II", 1, 1) + struct.pack("<II", 0, 2**31) + b"\x00\0\0\0", "truncated"),
])
def test_every_malformed_bulk_tick_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(wire.ProtocolError, match=why):
        decode_bulk_tick(payload)


async def test_blocks_equal_single_streams_and_run_in_order() -> None:
    """The same streams through `submit` one by one and through `submit_block` (two blocks
    naming the same slots in one tick, so they must run one after the other)."""
    model = TinyConvGRU().eval()
    xs = [audio(20 + i, 8) for i in range(3)]
    async with LocalEngine(model, device="cpu", max_streams=8, tick_deadline=0.003) as single:
        for i in range(3):
            single.open_stream(f"s{i}")
        want = await asyncio.gather(*(feed_hops(single, f"s{i}", x, chunk_hops=2)
                                      for i, x in enumerate(xs)))
    async with LocalEngine(model, device="cpu", max_streams=8, tick_deadline=0.003) as bulk:
        for i in range(3):
            bulk.open_stream(f"b{i}")
        slots = np.array([bulk.slot_of(f"b{i}") for i in range(3)])
        frames = np.stack(xs).reshape(3, -1, F)
        outs = []
        for k in range(0, frames.shape[1], 2):  # two frames per stream queued before a tick
            first = bulk.submit_block(slots, frames[:, k].copy())
            second = bulk.submit_block(slots[::-1].copy(), frames[::-1, k + 1].copy())
            a, b = await asyncio.gather(first, second)
            outs += [a, b[::-1]]
        got = np.concatenate(outs, axis=1)
    for i in range(3):
        np.testing.assert_allclose(got[i], want[i], atol=1e-5)
        np.testing.assert_allclose(got[i], offline(model, xs[i]), atol=1e-5)


async def test_a_block_is_checked() -> None:
    async with LocalEngine(IdentityModel(), device="cpu", max_streams=4) as engine:
        engine.open_stream("a")
        with pytest.raises(EngineError, match="block"):
            engine.submit_block(np.array([1]), np.zeros((1, 100), np.float32))
        with pytest.raises(EngineError, match="slots"):
            engine.submit_block(np.array([9]), np.zeros((1, F), np.float32))


@pytest.fixture
async def server() -> AsyncIterator[WorkerServer]:
    engine = LocalEngine(TinyConvGRU().eval(), device="cpu", max_streams=8,
                         tick_deadline=0.003)
    await engine.start()
    worker = WorkerServer(engine, "127.0.0.1", 0, description="tiny")
    await worker.start()
    yield worker
    await worker.close()
    await engine.close()


async def test_v1_and_v2_nodes_share_a_worker(server: WorkerServer) -> None:
    model = server.engine.model
    new = RemoteEngine(f"127.0.0.1:{server.port}", node="new")
    old = RemoteEngine(f"127.0.0.1:{server.port}", node="old", layout=wire.RECORDS_LAYOUT)
    await new.start()
    await old.start()
    try:
        assert (new.layout, old.layout) == (wire.BULK_LAYOUT, wire.RECORDS_LAYOUT)
        xs = {f"s{i}": audio(30 + i, 10) for i in range(4)}
        for sid in xs:
            (new if sid < "s2" else old).open_stream(sid)
        outs = await asyncio.gather(*(feed_hops(new if sid < "s2" else old, sid, x,
                                                chunk_hops=2) for sid, x in xs.items()))
        for (sid, x), out in zip(xs.items(), outs, strict=True):
            np.testing.assert_allclose(out, offline(model, x), atol=1e-5, err_msg=sid)
        assert server.stats.entries["ok"] == 20
        new.close_stream("s0")  # CLOSE goes out as a bulk entry and frees the slot
        await asyncio.sleep(0.05)
        assert server.engine.live_streams == 3
    finally:
        await new.close()
        await old.close()


async def _raw(server: WorkerServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await greet(reader, writer, "raw", None, wire.BULK_LAYOUT)
    return reader, writer


async def test_a_bad_bulk_entry_fails_alone(server: WorkerServer) -> None:
    model = server.engine.model
    reader, writer = await _raw(server)
    x = audio(40, 2)
    bad = np.full(F, np.nan, np.float32)
    samples = np.concatenate([x, bad, x, x[:HOP + 7]])
    writer.write(encode_bulk_tick(5, np.array([0, 1, 2, 3], np.uint32),
                                  np.array([F, F, F, HOP + 7], np.uint32),
                                  np.array([1, 1, 0, 1], np.uint8), samples))
    kind, payload = await wire.read_message(reader)
    result = decode_bulk_result(payload)
    assert kind is wire.MessageType.RESULT and result.seq == 5
    assert result.status.tolist() == [wire.Status.OK, wire.Status.ERROR, wire.Status.UNKNOWN,
                                      wire.Status.ERROR]
    assert "NaN" in result.reasons[0] and "OPEN" in result.reasons[1]
    assert "whole hops" in result.reasons[2]
    np.testing.assert_allclose(result.samples, offline(model, x), atol=1e-5)
    writer.close()


async def test_a_malformed_bulk_tick_closes_only_its_connection(server: WorkerServer) -> None:
    model = server.engine.model
    good = RemoteEngine(f"127.0.0.1:{server.port}", node="good")
    await good.start()
    try:
        good.open_stream("a")
        x = audio(41, 4)
        first = await good.process("a", x[:F])
        reader, writer = await _raw(server)
        writer.write(_tick([1, 1], [F, F], [1, 1]))  # a handle twice
        kind, payload = await asyncio.wait_for(wire.read_message(reader), 5)
        assert kind is wire.MessageType.ERROR
        assert "twice" in wire.decode_error(payload)
        assert await reader.read() == b""
        # a records TICK on a bulk connection: refused too
        reader, writer = await _raw(server)
        writer.write(wire.encode_tick(1, [wire.TickEntry("s", wire.Flags.OPEN, x[:F])]))
        kind, payload = await asyncio.wait_for(wire.read_message(reader), 5)
        assert kind is wire.MessageType.ERROR
        second = await good.process("a", x[F:])
        np.testing.assert_allclose(np.concatenate([first, second]), offline(model, x),
                                   atol=1e-5)
        assert server.stats.protocol_errors == 2
    finally:
        await good.close()


async def test_a_node_refuses_a_worker_of_an_older_protocol_clearly() -> None:
    """A stand-in for a worker of protocol version 2: it refuses version 3 as that code did,
    in a version-2 header. The node says which versions met, and does not fall back."""
    seen: list[int] = []

    async def old_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(wire.HEADER.size)
        seen.append(head[4])
        writer.write(wire.HEADER.pack(wire.MAGIC, 2, wire.MessageType.ERROR, 0))
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(old_worker, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    node = RemoteEngine(f"127.0.0.1:{port}", node="n")
    try:
        with pytest.raises(EngineError, match="protocol version 2 and this node 3"):
            await node.start()
        assert seen == [wire.PROTOCOL_VERSION]
    finally:
        await node.close()
        listener.close()


async def test_identity_model_returns_its_input_and_counts_hops() -> None:
    async with LocalEngine(IdentityModel(), device="cpu", max_streams=2) as engine:
        engine.open_stream("a")
        x = audio(50, 4)
        out = await feed_hops(engine, "a", x, chunk_hops=2)
        np.testing.assert_array_equal(out, x)


def test_admission_follows_the_measured_tick_cost() -> None:
    from denoiser.engine.capacity import Admission, TickCost

    admission = Admission(TickCost(fixed_ms=2.0, per_stream_ms=0.35), share=0.8, limit=256)
    assert admission.limit == admission.measured_at_start == 40  # (16 - 2) / 0.35
    for _ in range(200):  # the machine got busy: ticks of 20 streams take 16 ms a frame
        admission.observe(20, 2.0, 16.0)
    assert admission.limit == 20
    admission.observe(2, 2.0, 100.0)  # too small a tick to say anything
    assert admission.limit == 20


async def test_the_engine_sheds_the_newest_streams_when_ticks_run_late() -> None:
    from denoiser.engine import EngineFull
    from denoiser.engine.capacity import Admission, TickCost

    admission = Admission(TickCost(fixed_ms=0.0, per_stream_ms=16.0 / 6), share=0.8)
    admission.observe = lambda *_: None  # type: ignore[method-assign]  # the cost set by hand
    async with LocalEngine(IdentityModel(), device="cpu", max_streams=16,
                           admission=admission) as engine:
        for i in range(6):
            engine.open_stream(f"s{i}")
        with pytest.raises(EngineFull, match="real time"):
            engine.open_stream("s6")  # admission says 6
        admission.per_stream_ms = 16.0 / 4  # as if measured: only 4 fit now
        x = audio(60, 2)
        await asyncio.gather(*(engine.process(f"s{i}", x) for i in range(4)))
        assert engine.shed_streams == 2
        with pytest.raises(EngineFull, match="shed"):
            await engine.process("s5", x)  # the newest pass through
        np.testing.assert_array_equal(await engine.process("s0", x), x)
        assert engine.stats.errors["shed"] == 1
        admission.per_stream_ms = 16.0 / 8
        await engine.process("s0", x)  # the next tick lets them back in
        assert engine.shed_streams == 0


async def test_a_tick_whose_every_output_is_non_finite_is_answered(
        server: WorkerServer) -> None:
    """Failed before: entries of two sizes whose outputs were all non-finite left no row to
    put back in order; `np.concatenate([])` raised in the reply's callback and the RESULT was
    never sent (found by `bench fuzz --targets worker`)."""
    reader, writer = await _raw(server)
    huge = np.full(F + HOP, 3e38, np.float32)
    writer.write(encode_bulk_tick(9, np.array([0, 1], np.uint32), np.array([F, HOP], np.uint32),
                                  np.array([1, 1], np.uint8), huge))
    kind, payload = await asyncio.wait_for(wire.read_message(reader), 10)
    result = decode_bulk_result(payload)
    assert kind is wire.MessageType.RESULT and result.seq == 9
    assert result.status.tolist() == [wire.Status.ERROR, wire.Status.ERROR], result.reasons
    assert result.samples.size == 0
    writer.close()
