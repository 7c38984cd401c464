"""Raw-socket HTTP for hostile-client tests: requests sent in pieces, slowly, or half-sent.

aiohttp's client always sends a whole, well-formed request at once; a real network (and an
attacker) does not. These helpers write exactly the bytes given, with pauses between them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def build_request(method: str, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None, host: str = "sfu") -> bytes:
    """An HTTP/1.1 request with Content-Length (unless given) and `Connection: close`."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    given = {k.lower() for k in (headers or {})}
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0) -> RawResponse:
    """Read one response: its Content-Length, or up to the server's close."""
    async def read() -> RawResponse:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 101 or status == 204 or status == 304:
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
        if headers.get("transfer-encoding") == "chunked":
            body = dechunk(body)
        return RawResponse(status, headers, body)
    return await asyncio.wait_for(read(), timeout)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


async def send_in_pieces(host: str, port: int, pieces: list[bytes], pause: float = 0.2,
                         timeout: float = 10.0) -> RawResponse:
    """Write `pieces` one by one, `pause` seconds apart, then read the response."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, if it closed within `seconds`; None otherwise."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return None
    except ConnectionError:
        return b""
