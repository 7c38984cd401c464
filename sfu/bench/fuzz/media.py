"""Target `rtp`: garbage datagrams at the server's media UDP ports: those of the live call
(from its SDP answers' host candidates), every UDP socket the server process holds (/proc),
and random ports of the ephemeral range. Random bytes, RTP with random payload types and
SSRCs, RTCP with lying lengths, STUN with broken attributes, DTLS records with garbage. There
is no answer to judge: the checks after the batch (the live call still denoised, /healthz,
memory) are the verdict. Only addresses of this machine are ever targeted."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from pathlib import Path

from sfu.bench.fuzz.cases import Case, FuzzEnv, Outcome, mutate_bytes, pick
from sfu.bench.fuzz.system import check_local

STUN_COOKIE = 0x2112A442


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def rtp(rng: random.Random) -> bytes:
    first = 0x80 | (rng.random() < 0.2) << 5 | (rng.random() < 0.3) << 4 | rng.randrange(16)
    marker_pt = (rng.random() < 0.5) << 7 | pick(rng, (111, 111, 0, 8, 9, 96, 127, 72, 77,
                                                      rng.randrange(128)))
    head = struct.pack("!BBHII", first, marker_pt, rng.randrange(65536),
                       rng.randrange(2 ** 32), rng.randrange(2 ** 32))
    if first & 0x0F:
        head += rng.randbytes(4 * (first & 0x0F))
    if first & 0x10:  # extension header, length maybe lying
        head += struct.pack("!HH", pick(rng, (0xBEDE, 0x1000, rng.randrange(65536))),
                            rng.randrange(65536)) + rng.randbytes(rng.randint(0, 16))
    payload = rng.randbytes(rng.choice((0, 1, 3, 60, 160, 1200)))
    if first & 0x20 and payload:  # padding count maybe beyond the payload
        payload = payload[:-1] + bytes([rng.randrange(256)])
    return head + payload


def rtcp(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 4)):
        pt = pick(rng, (200, 201, 202, 203, 204, 205, 206, 207, rng.randrange(192, 224)))
        count = rng.randrange(32)
        body = rng.randbytes(rng.choice((0, 4, 8, 24, 100)))
        length = pick(rng, ((len(body) + 4) // 4 - 1, 0, 0xFFFF, rng.randrange(65536)))
        out += struct.pack("!BBHI", 0x80 | count, pt, length, rng.randrange(2 ** 32)) + body
    return out


def stun(rng: random.Random) -> bytes:
    attrs = b""
    for _ in range(rng.randint(0, 5)):
        kind = pick(rng, (0x0006, 0x0008, 0x8028, 0x0024, 0x8029, 0x802A, 0x0025, 0x0020,
                          rng.randrange(65536)))
        value = rng.randbytes(rng.choice((0, 4, 20, 300, 600)))
        length = pick(rng, (len(value), len(value) + 8, 0xFFFF))
        attrs += struct.pack("!HH", kind, length) + value + b"\0" * (-len(value) % 4)
    kind = pick(rng, (0x0001, 0x0101, 0x0111, rng.randrange(0x4000)))
    length = pick(rng, (len(attrs), len(attrs) + 4, 0xFFFF, 0))
    return struct.pack("!HHI", kind, length, STUN_COOKIE) + rng.randbytes(12) + attrs


def dtls(rng: random.Random) -> bytes:
    kind = pick(rng, (20, 21, 22, 23, 24, 25))
    version = pick(rng, (b"\xfe\xfd", b"\xfe\xff", b"\x03\x03", rng.randbytes(2)))
    body = rng.randbytes(rng.choice((0, 1, 12, 50, 300, 1400)))
    if kind == 22 and body:  # a handshake message header with a lying length
        body = bytes([pick(rng, (1, 2, 11, 12, 14, 16, 20))]) + rng.randbytes(11) + body
    length = pick(rng, (len(body), len(body) + 100, 0xFFFF, 0))
    return bytes([kind]) + version + rng.randbytes(8) + struct.pack("!H", length) + body


def datagram(rng: random.Random) -> tuple[str, bytes]:
    maker = pick(rng, (("random", lambda r: r.randbytes(r.choice((0, 1, 11, 12, 200, 1500,
                                                                  9000, 65000)))),
                       ("rtp", rtp), ("rtp", rtp), ("rtcp", rtcp), ("stun", stun),
                       ("dtls", dtls)))
    kind, make = maker
    data = make(rng)
    if rng.random() < 0.15:
        data = mutate_bytes(rng, data)
        kind += "+mutated"
    return kind, data[:65507]


class MediaTarget:
    name = "rtp"

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def _socket(self, host: str) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.bind((check_local(host), 0))
            self._sock.setblocking(False)
        return self._sock

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        host = env.system.media_host
        if env.media_targets and rng.random() < 0.85:
            addr, port = pick(rng, env.media_targets)
        else:
            addr, port = host, rng.randint(*ephemeral_range())
        check_local(addr)
        sock = self._socket(host)
        kinds, sent = [], []
        for _ in range(rng.choice((1, 1, 3, 10, 30))):
            kind, data = datagram(rng)
            kinds.append(kind)
            sent.append(data)
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError, OSError):
                sock.sendto(data, (addr, port))
        case.what = f"{len(sent)} datagrams to {addr}:{port}: {','.join(sorted(set(kinds)))}"
        case.payload = b"|".join(d[:200] for d in sent)
        return Outcome(note=case.what)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
