"""Target `worker`: malformed frames at the worker's port: bad magic, versions and types,
declared lengths up to the 8 MiB limit with little or nothing sent, bad HELLOs, AUTHs that must
fail (another secret, a replayed nonce, another name or layout, junk), and (after a real
protocol-3 handshake with the shared secret) TICKs of both layouts with lying
counts, sizes, flags, handles and NaN samples. What the worker answers is read but not judged:
the checks after the batch (the live call still denoised through this worker, its process
alive, its memory and fds) are the verdict, and its log's error lines are counted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from dataclasses import dataclass

import numpy as np

from denoiser.worker import auth
from denoiser.worker import protocol as wire
from denoiser.worker.bulk import encode_bulk_tick
from denoiser.worker.handshake import greet
from sfu.bench.fuzz.cases import Case, FuzzEnv, Outcome, mutate_bytes, pick
from sfu.bench.fuzz.system import LOOPBACK

HOP = 480


def _header(rng: random.Random, kind: int, length: int,
            version: int = wire.PROTOCOL_VERSION) -> bytes:
    return wire.HEADER.pack(wire.MAGIC, version, kind, length)


def bad_hello(rng: random.Random) -> tuple[str, bytes]:
    """A HELLO the worker must refuse before any challenge: a bad name, layout or version."""
    node = pick(rng, ("fuzz", "", "n" * 1024, "é", "fuzz\x00"))
    layout = pick(rng, (wire.RECORDS_LAYOUT, wire.BULK_LAYOUT, 0, 3, 255))
    version = pick(rng, (wire.PROTOCOL_VERSION, 1, 2, 4, 255))
    name = node.encode()
    payload = struct.pack("<H", len(name)) + name + struct.pack("<B", layout)
    if rng.random() < 0.3:
        payload = payload[: rng.randrange(len(payload) + 1)]
    return (f"bad hello node {node[:20]!r} layout {layout} v{version}",
            wire.HEADER.pack(wire.MAGIC, version, wire.MessageType.HELLO, len(payload)) + payload)


def bad_auth(rng: random.Random, secret: str, nonce: bytes, layout: int) -> tuple[str, bytes]:
    """An AUTH that must not pass: a MAC for another secret, nonce, name or layout, or junk."""
    choice = rng.randrange(6)
    version = wire.PROTOCOL_VERSION
    if choice == 0:
        return "auth for another secret", wire.encode_auth(
            auth.answer("other-secret", nonce, "fuzz", version, layout))
    if choice == 1:  # a replay: a MAC for an earlier nonce
        return "auth replayed from another nonce", wire.encode_auth(
            auth.answer(secret, bytes(32), "fuzz", version, layout))
    if choice == 2:
        return "auth for another name", wire.encode_auth(
            auth.answer(secret, nonce, "someone-else", version, layout))
    if choice == 3:
        other = wire.BULK_LAYOUT if layout == wire.RECORDS_LAYOUT else wire.RECORDS_LAYOUT
        return "auth for the other layout", wire.encode_auth(
            auth.answer(secret, nonce, "fuzz", version, other))
    if choice == 4:
        return "empty auth", wire.encode_auth(b"")
    junk = rng.randbytes(rng.choice((1, 31, 32, 33, 2000)))
    return f"auth of {len(junk)} random bytes", _header(
        rng, wire.MessageType.AUTH, len(junk)) + junk


def tick_v1(rng: random.Random) -> bytes:
    entries = []
    for i in range(rng.randint(0, 5)):
        flags = pick(rng, (wire.Flags.OPEN, wire.Flags.NONE, wire.Flags.CLOSE))
        n = 0 if flags == wire.Flags.CLOSE else HOP * rng.choice((1, 2))
        samples = rng.choice((np.zeros(n, np.float32),
                              np.full(n, np.nan, np.float32), np.full(n, 1e38, np.float32)))
        entries.append(wire.TickEntry(f"s{i}", flags, samples))
    data = bytearray(wire.encode_tick(rng.randrange(2 ** 32), entries))
    op = rng.randrange(5)
    if op == 0 and len(data) > 16:  # entry count lies
        struct.pack_into("<H", data, 14, pick(rng, (4096, 4097, 65535, len(entries) + 1)))
    elif op == 1 and len(data) > 17:  # a flag byte or a size lies
        pos = rng.randrange(16, len(data))
        data[pos] = rng.randrange(256)
    elif op == 2:  # samples not a whole number of hops
        return wire.encode_tick(1, [wire.TickEntry("odd", wire.Flags.OPEN,
                                                   np.zeros(rng.randint(1, 479), np.float32))])
    return bytes(data)


def tick_v2(rng: random.Random) -> bytes:
    n = rng.randint(0, 6)
    handles = np.array([pick(rng, (0, 1, 2, 2 ** 17 - 1, i)) for i in range(n)], np.uint32)
    sizes = np.array([pick(rng, (HOP, 2 * HOP, 0)) for _ in range(n)], np.uint32)
    flags = np.array([pick(rng, (1, 0, 2, 3)) for _ in range(n)], np.uint8)
    samples = np.zeros(int(sizes.sum()), np.float32)
    if rng.random() < 0.3 and samples.size:
        samples[:] = np.nan
    try:
        data = bytearray(encode_bulk_tick(rng.randrange(2 ** 32), handles, sizes, flags, samples))
    except wire.ProtocolError:
        data = bytearray(wire.HEADER.pack(wire.MAGIC, wire.PROTOCOL_VERSION,
                                          wire.MessageType.TICK, 8) + struct.pack("<II", 1, 0))
    op = rng.randrange(5)
    body = 10
    if op == 0 and len(data) >= body + 8:  # the entry count lies
        struct.pack_into("<I", data, body + 4, pick(rng, (16_384, 16_385, 2 ** 32 - 1, n + 1)))
    elif op == 1 and n and len(data) >= body + 8 + 8 * n:  # a size lies
        struct.pack_into("<I", data, body + 8 + 4 * n + 4 * rng.randrange(n),
                         pick(rng, (2 ** 32 - 1, 2 ** 31, HOP + 1, 1)))
    elif op == 2 and len(data) > body + 8:
        data[rng.randrange(body, len(data))] = rng.randrange(256)
    return bytes(data)


@dataclass
class Plan:
    """What one case does: the handshake (`none`: raw frames from the first byte; `valid`: a
    real HELLO/CHALLENGE/AUTH; `bad_auth`: a real HELLO, then an AUTH that must fail), the
    frames after it, and whether the connection stays open a while."""

    what: str
    handshake: str
    layout: int
    frames: list[bytes]
    linger: bool = False


def plan(rng: random.Random) -> Plan:
    layout = pick(rng, wire.LAYOUTS)
    tick = tick_v1 if layout == wire.RECORDS_LAYOUT else tick_v2
    other = tick_v2 if layout == wire.RECORDS_LAYOUT else tick_v1
    op = rng.randrange(10)
    if op == 0:
        return Plan("random bytes", "none", layout,
                    [rng.randbytes(rng.choice((1, 9, 10, 11, 100, 5000)))])
    if op == 1:
        head = wire.HEADER.pack(pick(rng, (b"DNSW", b"dnsw", b"\0\0\0\0", b"GET ")),
                                pick(rng, (0, 1, 2, 3, 4, 255)),
                                pick(rng, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255)),
                                pick(rng, (0, 1, 100, wire.MAX_PAYLOAD + 1, 2 ** 32 - 1)))
        return Plan("bad header", "none", layout, [head + rng.randbytes(rng.choice((0, 10, 100)))])
    if op == 2:  # a big declared payload, then little or nothing: memory held by the reader
        length = pick(rng, (wire.MAX_PAYLOAD, wire.MAX_PAYLOAD - 1, 4 * 1024 * 1024))
        linger = rng.random() < 0.5
        return Plan(f"hello declaring {length} bytes, then {'silence' if linger else 'close'}",
                    "none", layout, [_header(rng, wire.MessageType.HELLO, length)
                                     + rng.randbytes(rng.choice((0, 1000, 60_000, 4_000_000)))],
                    linger)
    if op == 3:
        what, data = bad_hello(rng)
        return Plan(what, "none", layout, [data])
    if op == 4:
        return Plan("tick before hello", "none", layout, [tick(rng)])
    if op == 5:
        return Plan("bad auth", "bad_auth", layout, [])
    if op == 6:
        return Plan("valid handshake then mutated bytes", "valid", layout,
                    [mutate_bytes(rng, wire.encode_tick(1, []))])
    out = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        if kind == 0:
            out.append(wire.encode_hello("again", layout))
        elif kind == 1:
            out.append(wire.encode_error("x"))
        elif kind == 2:
            out.append(other(rng))
        elif kind == 3:
            out.append(wire.encode_auth(rng.randbytes(32)))
        else:
            out.append(tick(rng))
    return Plan(f"valid handshake (layout {layout}) then {len(out)} frames", "valid", layout,
                out, rng.random() < 0.2)


class WorkerTarget:
    name = "worker"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        todo = plan(rng)
        sent = todo.frames
        if sent and rng.random() < 0.3 and len(sent[-1]) > 1:  # cut the last frame short
            sent[-1] = sent[-1][: rng.randrange(1, len(sent[-1]))]
            todo.what += ", last frame truncated"
        case.what, case.payload = todo.what, b"|".join(f[:400] for f in sent)
        outcome = Outcome()
        secret = env.system.secret
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, env.system.worker_port), 5.0)
        answered = b""
        try:
            if todo.handshake == "valid":
                await asyncio.wait_for(greet(reader, writer, "fuzz", secret, todo.layout), 5.0)
            elif todo.handshake == "bad_auth":
                writer.write(wire.encode_hello("fuzz", todo.layout))
                kind, payload = await asyncio.wait_for(
                    wire.read_message(reader, wire.MAX_HANDSHAKE_PAYLOAD), 5.0)
                nonce = wire.decode_challenge(payload).nonce \
                    if kind is wire.MessageType.CHALLENGE else bytes(32)
                what, data = bad_auth(rng, secret, nonce, todo.layout)
                case.what = todo.what = f"{todo.what}: {what}"
                sent.append(data)
            for frame in sent:
                writer.write(frame)
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                answered = await asyncio.wait_for(reader.read(4096),
                                                  2.0 if todo.linger else 0.3)
            if todo.linger:
                await asyncio.sleep(1.0)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, wire.ProtocolError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        outcome.note = f"answered {answered[:60]!r}"
        return outcome
