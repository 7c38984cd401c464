"""HTTP over a raw socket: whatever bytes a target wants, in segments with pauses, and the
status line of what comes back (None if nothing came in time)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence

STATUS_RE = re.compile(rb"^HTTP/\d\.\d (\d{3})")


async def exchange(host: str, port: int, segments: list[bytes], pauses: list[float],
                   read_timeout: float = 3.0, half_close: bool = False
                   ) -> tuple[int | None, bytes]:
    """Send `segments` (sleeping `pauses[i]` after segment i), then read the answer's head:
    (status or None, the first bytes answered)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
    data = b""
    try:
        for i, segment in enumerate(segments):
            writer.write(segment)
            await writer.drain()
            if i < len(pauses) and pauses[i] > 0:
                await asyncio.sleep(pauses[i])
        if half_close and writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        end = loop.time() + read_timeout
        while b"\r\n\r\n" not in data and len(data) < 65536:
            left = end - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(4096), left)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        # the body too, a little, for the error code
        with contextlib.suppress(TimeoutError):
            data += await asyncio.wait_for(reader.read(2048), 0.05)
    except (ConnectionError, OSError):
        pass  # the server hung up on us: an answer too (judged by the status, if any)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    match = STATUS_RE.match(data)
    return (int(match.group(1)) if match else None), data[:2048]


def request(method: str, path: str, headers: Sequence[tuple[str, str] | bytes],
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """A request's bytes (header entries are (name, value) or raw lines)."""
    lines = [f"{method} {path} {version}".encode("utf-8", "surrogateescape")]
    for header in headers:
        if isinstance(header, bytes):
            lines.append(header)
        else:
            lines.append(f"{header[0]}: {header[1]}".encode("utf-8", "surrogateescape"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def brief(head: bytes) -> str:
    """The status line and the body of an answer, without the other headers."""
    first, _, rest = head.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return (first + b" " + body[:300]).decode("latin-1")
