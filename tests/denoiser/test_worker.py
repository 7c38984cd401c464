"""The worker service over real TCP on loopback: a `WorkerServer` around a real `LocalEngine`
(a tiny conv+GRU model), reached through `RemoteEngine`, the SFU node's side.

Same answers as the model run offline, streams of different nodes never meet but share the
engine's batches, refusals (full, NaN, unknown) reach only the stream concerned, a node that
breaks the protocol loses only its own connection, and a worker that goes away fails requests
at once and is found again when it comes back."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
import torch

from denoiser.engine import Engine, EngineError, EngineFull
from denoiser.engine.local import LocalEngine
from denoiser.worker import protocol as wire
from denoiser.worker.auth import Unauthorized, answer, check_answer
from denoiser.worker.client import RemoteEngine
from denoiser.worker.handshake import greet
from denoiser.worker.pool import WorkerPool
from denoiser.worker.server import WorkerServer
from support.models import HOP, TinyConvGRU, audio, offline
from support.models import feed as feed_hops

torch.set_num_threads(1)
pytestmark = pytest.mark.timeout(60)




def feed(engine: Engine, sid: str, x: np.ndarray) -> Awaitable[np.ndarray]:
    """Two hops per request: a 20 ms frame, as the SFU sends."""
    return feed_hops(engine, sid, x, chunk_hops=2)


@pytest.fixture
def model() -> TinyConvGRU:
    return TinyConvGRU().eval()


Worker = Callable[..., Awaitable[WorkerServer]]


@pytest.fixture
async def worker(model: TinyConvGRU) -> AsyncIterator[Worker]:
    """`await worker(max_streams=8, port=0, secret=None)`: a started worker; all closed at
    teardown."""
    started: list[tuple[WorkerServer, LocalEngine]] = []

    async def start(max_streams: int = 8, port: int = 0, secret: str | None = None
                    ) -> WorkerServer:
        engine = LocalEngine(model, device="cpu", max_streams=max_streams, tick_deadline=0.003)
        await engine.start()
        server = WorkerServer(engine, "127.0.0.1", port, description="tiny", secret=secret)
        await server.start()
        started.append((server, engine))
        return server

    yield start
    for server, engine in started:
        await server.close()
        await engine.close()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[RemoteEngine]]]:
    engines: list[RemoteEngine] = []

    async def make(server: WorkerServer, node: str = "node") -> RemoteEngine:
        engine = RemoteEngine(f"127.0.0.1:{server.port}", node=node)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def test_remote_output_equals_the_model_offline(worker: Worker, connect, model) -> None:
    server = await worker()
    remote = await connect(server)
    assert (remote.sample_rate, remote.hop_size, remote.latency_samples) == \
        (48_000, HOP, model.latency_samples)
    x = audio(1, 40)
    remote.open_stream("a")
    out = await feed(remote, "a", x)
    np.testing.assert_allclose(out, offline(model, x), atol=1e-5)
    assert remote.stats.ticks_sent == 20 and remote.stats.hops_sent == 40
    assert server.stats.entries["ok"] == 20


async def test_two_nodes_share_batches_but_never_state(worker: Worker, connect, model) -> None:
    server = await worker()
    node_a, node_b = await connect(server, "a"), await connect(server, "b")
    xa, xb = audio(2, 30), audio(3, 30)
    node_a.open_stream("same-id")
    node_b.open_stream("same-id")  # the same id on two nodes: two streams on the worker
    out_a, out_b = await asyncio.gather(feed(node_a, "same-id", xa), feed(node_b, "same-id", xb))
    np.testing.assert_allclose(out_a, offline(model, xa), atol=1e-5)
    np.testing.assert_allclose(out_b, offline(model, xb), atol=1e-5)
    assert server.engine.stats.batch_sizes[2] > 0, server.engine.stats.batch_sizes
    assert server.stats.connections_open == 2


async def test_one_tick_carries_every_stream_of_the_node(worker: Worker, connect, model) -> None:
    server = await worker()
    remote = await connect(server)
    streams = {f"s{i}": audio(10 + i, 10) for i in range(5)}
    for sid in streams:
        remote.open_stream(sid)
    outs = await asyncio.gather(*(feed(remote, sid, x) for sid, x in streams.items()))
    for (sid, x), out in zip(streams.items(), outs, strict=True):
        np.testing.assert_allclose(out, offline(model, x), atol=1e-5, err_msg=sid)
    assert remote.stats.ticks_sent == 5  # 5 rounds of 2 hops, all 5 streams in each TICK
    assert server.stats.ticks == 5


async def test_a_closed_stream_frees_its_worker_slot(worker: Worker, connect) -> None:
    server = await worker(max_streams=1)
    node_a, node_b = await connect(server, "a"), await connect(server, "b")
    node_a.open_stream("x")
    await node_a.process("x", audio(4, 2))
    node_b.open_stream("y")  # the node does not know about node a's stream
    with pytest.raises(EngineFull):
        await node_b.process("y", audio(5, 2))
    assert server.stats.entries["full"] == 1
    node_a.close_stream("x")
    await asyncio.sleep(0.05)  # the CLOSE goes out with the next turn of the loop
    out = await node_b.process("y", audio(5, 2))  # asks for a slot again, and gets it
    assert out.shape == (2 * HOP,)
    assert server.engine.live_streams == 1


async def test_a_bad_entry_fails_alone(worker: Worker, connect, model) -> None:
    server = await worker()
    remote = await connect(server)
    remote.open_stream("good")
    remote.open_stream("bad")
    x = audio(6, 2)
    bad = np.full(2 * HOP, np.nan, np.float32)
    with pytest.raises(EngineError, match="NaN"):
        await remote.process("bad", bad)  # refused on the node already: never sent
    # The same entry built by hand reaches the worker, which refuses it in its RESULT only.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await greet(reader, writer, "raw", None, wire.RECORDS_LAYOUT)
    writer.write(wire.encode_tick(7, [wire.TickEntry("g", wire.Flags.OPEN, x),
                                      wire.TickEntry("n", wire.Flags.OPEN, bad),
                                      wire.TickEntry("u", wire.Flags.NONE, x)]))
    kind, payload = await wire.read_message(reader)
    seq, entries = wire.decode_result(payload)
    assert kind is wire.MessageType.RESULT and seq == 7
    assert [(e.stream_id, e.status) for e in entries] == [
        ("g", wire.Status.OK), ("n", wire.Status.ERROR), ("u", wire.Status.UNKNOWN)]
    np.testing.assert_allclose(entries[0].samples, offline(model, x), atol=1e-5)
    assert "NaN" in entries[1].reason
    out = await remote.process("good", x)  # the other node never noticed
    np.testing.assert_allclose(out, offline(model, x), atol=1e-5)
    writer.close()


V = wire.PROTOCOL_VERSION


@pytest.mark.parametrize(("after_handshake", "garbage"), [
    (False, b"GET / HTTP/1.1\r\n\r\n"),  # not our protocol at all
    (False, wire.HEADER.pack(wire.MAGIC, 9, wire.MessageType.HELLO, 0)),  # a future version
    (False, wire.HEADER.pack(wire.MAGIC, V, 77, 0)),  # unknown type
    (False, wire.HEADER.pack(wire.MAGIC, V, wire.MessageType.TICK, 2**31)),  # too long
    (False, wire.encode_tick(1, [])),  # TICK before the handshake
    (True, wire.HEADER.pack(wire.MAGIC, V, wire.MessageType.TICK, 3) + b"abc"),  # truncated
    (True, wire.encode_hello("twice")),  # HELLO again
    (True, wire._message(wire.MessageType.TICK, struct.pack(
        "<IHB", 1, 1, 1) + b"s" + bytes([8]) + struct.pack("<I", 0))),  # unknown flag
])
async def test_a_node_that_breaks_the_protocol_loses_only_its_connection(
        worker: Worker, connect, model, after_handshake: bool, garbage: bytes) -> None:
    server = await worker()
    remote = await connect(server)
    remote.open_stream("a")
    x = audio(7, 4)
    first = await remote.process("a", x[:2 * HOP])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if after_handshake:
        await greet(reader, writer, "x", None, wire.RECORDS_LAYOUT)
    writer.write(garbage)
    kind, payload = await asyncio.wait_for(wire.read_message(reader), 5)
    assert kind is wire.MessageType.ERROR
    print(wire.decode_error(payload))
    assert await reader.read() == b""  # and the worker hung up
    writer.close()
    second = await remote.process("a", x[2 * HOP:])
    np.testing.assert_allclose(np.concatenate([first, second]), offline(model, x), atol=1e-5)
    assert server.stats.protocol_errors == 1
    assert server.engine.live_streams == 1


async def test_a_lost_worker_fails_requests_and_is_found_again(worker: Worker, connect,
                                                               model) -> None:
    server = await worker()
    port = server.port
    remote = await connect(server)
    remote.open_stream("a")
    await remote.process("a", audio(8, 2))
    await server.close()  # stops listening and hangs up
    await asyncio.sleep(0.05)
    with pytest.raises(EngineError, match="connect"):
        await remote.process("a", audio(8, 2))
    assert not remote.connected
    revived = await worker(port=port)
    for _ in range(100):
        if remote.connected:
            break
        await asyncio.sleep(0.05)
    assert remote.connected and remote.stats.connects == 2
    x = audio(9, 10)  # the stream starts afresh on the new worker
    np.testing.assert_allclose(await feed(remote, "a", x), offline(model, x), atol=1e-5)
    assert revived.engine.live_streams == 1


async def test_a_pool_places_streams_on_the_worker_with_room(worker: Worker, model) -> None:
    small, big = await worker(max_streams=1), await worker(max_streams=3)
    pool = WorkerPool([f"127.0.0.1:{small.port}", f"127.0.0.1:{big.port}"], node="n")
    await pool.start()
    try:
        for sid in ("a", "b", "c", "d"):
            pool.open_stream(sid)
        with pytest.raises(EngineFull):
            pool.open_stream("e")
        x = audio(11, 6)
        outs = await asyncio.gather(*(feed(pool, sid, x) for sid in "abcd"))
        for out in outs:
            np.testing.assert_allclose(out, offline(model, x), atol=1e-5)
        assert (small.engine.live_streams, big.engine.live_streams) == (1, 3)
    finally:
        await pool.close()


async def test_a_pool_moves_the_streams_of_a_lost_worker(worker: Worker, model) -> None:
    first, second = await worker(), await worker()
    pool = WorkerPool([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], node="n")
    await pool.start()
    try:
        pool.open_stream("a")
        pool.open_stream("b")  # one on each worker (equal room: the first, then the other)
        assert first.engine.live_streams == second.engine.live_streams == 0  # not yet sent
        await asyncio.gather(pool.process("a", audio(12, 2)), pool.process("b", audio(13, 2)))
        assert first.engine.live_streams == second.engine.live_streams == 1
        await first.close()
        await asyncio.sleep(0.05)
        lost = [sid for sid in "ab" if not pool._placed[sid].connected]
        assert len(lost) == 1
        with pytest.raises(EngineError, match="unknown stream"):
            await pool.process(lost[0], audio(14, 2))  # the SFU's stream then opens again
        pool.open_stream(lost[0])
        x = audio(15, 6)
        np.testing.assert_allclose(await feed(pool, lost[0], x), offline(model, x), atol=1e-5)
        assert second.engine.live_streams == 2
    finally:
        await pool.close()


async def test_a_pool_starts_without_an_absent_worker_and_finds_it_later(worker: Worker,
                                                                         model) -> None:
    present, absent = await worker(), await worker()
    absent_port = absent.port
    await absent.close()
    pool = WorkerPool([f"127.0.0.1:{present.port}", f"127.0.0.1:{absent_port}"], node="n")
    await pool.start()
    try:
        assert [w.connected for w in pool.workers] == [True, False]
        back = await worker(port=absent_port)
        for _ in range(100):
            if pool.workers[1].connected:
                break
            await asyncio.sleep(0.05)
        assert pool.workers[1].connected
        pool.open_stream("a")
        pool.open_stream("b")
        await asyncio.gather(pool.process("a", audio(16, 2)), pool.process("b", audio(17, 2)))
        assert back.engine.live_streams == 1 and present.engine.live_streams == 1
    finally:
        await pool.close()


async def test_a_pool_needs_one_worker_at_start() -> None:
    pool = WorkerPool(["127.0.0.1:1"], node="n", connect_timeout=1.0)
    with pytest.raises(EngineError, match="no worker could be reached"):
        await pool.start()
    await pool.close()


async def test_a_worker_with_a_secret_serves_only_nodes_that_know_it(worker: Worker,
                                                                     model) -> None:
    server = await worker(secret="s3cret")
    address = f"127.0.0.1:{server.port}"
    for secret, why in ((None, "needs a secret"), ("wrong", "not this worker's")):
        stranger = RemoteEngine(address, node="stranger", secret=secret)
        with pytest.raises(EngineError, match=why):
            await stranger.start()
        await stranger.close()
    # A captured handshake is worth nothing on another connection: its challenge differs.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(wire.encode_hello("late", wire.RECORDS_LAYOUT))
    kind, payload = await wire.read_message(reader)
    nonce = wire.decode_challenge(payload).nonce
    auth = wire.encode_auth(answer("s3cret", nonce, "late", wire.PROTOCOL_VERSION,
                                   wire.RECORDS_LAYOUT))
    writer.write(auth)
    assert (await wire.read_message(reader))[0] is wire.MessageType.WELCOME
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(wire.encode_hello("late", wire.RECORDS_LAYOUT) + auth)  # replayed
    kind, payload = await wire.read_message(reader)
    assert kind is wire.MessageType.CHALLENGE
    kind, payload = await wire.read_message(reader)
    assert kind is wire.MessageType.ERROR and "not this worker's" in wire.decode_error(payload)
    writer.close()
    assert server.stats.unauthorized == 3
    assert server.stats.handshake_failures["unauthorized"] == 3
    member = RemoteEngine(address, node="member", secret="s3cret")
    await member.start()
    try:
        member.open_stream("a")
        x = audio(18, 4)
        np.testing.assert_allclose(await feed(member, "a", x), offline(model, x), atol=1e-5)
    finally:
        await member.close()


def test_answers_bind_the_nonce_the_node_the_version_and_the_layout() -> None:
    nonce = bytes(range(32))
    mac = answer("k", nonce, "node", 3, 2)
    check_answer("k", nonce, "node", 3, 2, mac)
    for secret, other, node, version, layout, tok, why in (
            ("k", nonce[::-1], "node", 3, 2, mac, "bad answer"),  # another connection
            ("k", nonce, "other", 3, 2, mac, "bad answer"),  # bound to the node's name
            ("k", nonce, "node", 4, 2, mac, "bad answer"),
            ("k", nonce, "node", 3, 1, mac, "bad answer"),
            ("x", nonce, "node", 3, 2, mac, "bad answer"),
            ("k", nonce, "node", 3, 2, b"", "needs a secret"),
            ("k", nonce, "node", 3, 2, b"abc", "malformed")):
        with pytest.raises(Unauthorized, match=why):
            check_answer(secret, other, node, version, layout, tok)
