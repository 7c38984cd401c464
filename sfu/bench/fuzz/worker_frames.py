"""Target `worker`: malformed frames at the worker's port: bad magic, versions and types,
declared lengths up to the 8 MiB limit with little or nothing sent, HELLOs with bad tokens, and
(after a HELLO with a valid token for the shared secret) TICKs of both layouts with lying
counts, sizes, flags, handles and NaN samples. What the worker answers is read but not judged:
the checks after the batch (the live call still denoised through this worker, its process
alive, its memory and fds) are the verdict, and its log's error lines are counted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct

import numpy as np

from denoiser.worker import protocol as wire
from denoiser.worker.auth import hello_token
from denoiser.worker.bulk import encode_bulk_tick
from sfu.bench.fuzz.cases import Case, FuzzEnv, Outcome, mutate_bytes, pick
from sfu.bench.fuzz.system import LOOPBACK

HOP = 480


def _header(rng: random.Random, kind: int, length: int, version: int = 1) -> bytes:
    return wire.HEADER.pack(wire.MAGIC, version, kind, length)


def hello(rng: random.Random, secret: str, version: int, valid: bool) -> tuple[str, bytes]:
    node = pick(rng, ("fuzz", "", "n" * 1024, "é", "fuzz\x00"))
    if valid:
        node = "fuzz"
        return "valid hello", wire.encode_hello(node, hello_token(secret, node), version)
    token = pick(rng, ("", "1:abc", "x" * 1024, f"{2 ** 70}:{'0' * 64}", "-5:aa", ":",
                       hello_token("other-secret", node), hello_token(secret, "someone-else"),
                       hello_token(secret, node, now=0), "١٢٣:ab", "12:" + "g" * 64))
    payload = (struct.pack("<H", len(node.encode())) + node.encode()
               + struct.pack("<H", len(token.encode())) + token.encode())
    return f"bad hello token {token[:30]!r}", wire.HEADER.pack(wire.MAGIC, version, 1,
                                                              len(payload)) + payload


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
        data = bytearray(wire.HEADER.pack(wire.MAGIC, 2, 3, 8) + struct.pack("<II", 1, 0))
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


def frames(rng: random.Random, secret: str) -> tuple[str, list[bytes], bool]:
    """(what, the frames in order, whether the connection stays open a while after)."""
    version = pick(rng, (1, 2))
    op = rng.randrange(10)
    if op == 0:
        return "random bytes", [rng.randbytes(rng.choice((1, 9, 10, 11, 100, 5000)))], False
    if op == 1:
        head = wire.HEADER.pack(pick(rng, (b"DNSW", b"dnsw", b"\0\0\0\0", b"GET ")),
                                pick(rng, (0, 1, 2, 3, 255)), pick(rng, (0, 1, 2, 3, 4, 5, 6, 255)),
                                pick(rng, (0, 1, 100, wire.MAX_PAYLOAD + 1, 2 ** 32 - 1)))
        return "bad header", [head + rng.randbytes(rng.choice((0, 10, 100)))], False
    if op == 2:  # a big declared payload, then little or nothing: memory held by the reader
        length = pick(rng, (wire.MAX_PAYLOAD, wire.MAX_PAYLOAD - 1, 4 * 1024 * 1024))
        linger = rng.random() < 0.5
        return (f"hello declaring {length} bytes, then {'silence' if linger else 'close'}",
                [_header(rng, 1, length, version)
                 + rng.randbytes(rng.choice((0, 1000, 60_000, 4_000_000)))],
                linger)
    if op == 3:
        what, data = hello(rng, secret, version, valid=False)
        return what, [data], False
    if op == 4:
        return "tick before hello", [tick_v1(rng) if version == 1 else tick_v2(rng)], False
    if op == 5:
        what, data = hello(rng, secret, version, valid=True)
        return (f"{what} then mutated bytes",
                [data, mutate_bytes(rng, wire.encode_tick(1, []))], False)
    # a valid HELLO, then TICKs of its layout (some of the other layout, or other types)
    what, data = hello(rng, secret, version, valid=True)
    out = [data]
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind == 0:
            out.append(wire.encode_hello("again", ""))
        elif kind == 1:
            out.append(wire.encode_error("x"))
        elif kind == 2:
            out.append(tick_v2(rng) if version == 1 else tick_v1(rng))
        else:
            out.append(tick_v1(rng) if version == 1 else tick_v2(rng))
    return f"valid hello v{version} then {len(out) - 1} ticks", out, rng.random() < 0.2


class WorkerTarget:
    name = "worker"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        what, sent, linger = frames(rng, env.system.secret)
        if rng.random() < 0.3 and len(sent[-1]) > 1:  # cut the last frame short
            sent[-1] = sent[-1][: rng.randrange(1, len(sent[-1]))]
            what += ", last frame truncated"
        case.what, case.payload = what, b"|".join(f[:400] for f in sent)
        outcome = Outcome()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, env.system.worker_port), 5.0)
        answered = b""
        try:
            for frame in sent:
                writer.write(frame)
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                answered = await asyncio.wait_for(reader.read(4096), 2.0 if linger else 0.3)
            if linger:
                await asyncio.sleep(1.0)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        outcome.note = f"answered {answered[:60]!r}"
        return outcome
