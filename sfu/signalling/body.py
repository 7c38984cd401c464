"""Reading a request body from the network: whole, bounded, in time, decoded, or a clean 4xx.

Every body this server reads goes through `read_body` (SDP through `read_sdp`, JSON through
`read_json`). `request.content.read(n)` returns only what has arrived so far, so an offer that
spans two TCP segments was cut short; `read_body` reads until end of body and:

  - 413 when the body (after decompression) exceeds the limit; the declared Content-Length
    is checked first, so an honest oversized request is refused before a byte is read,
  - 408 when the whole body has not arrived within `body_timeout` seconds,
  - 415 for a Content-Encoding other than identity, gzip or deflate (aiohttp decompresses
    those two as the bytes arrive; a corrupt stream is 400 `bad_encoding`),
  - 400 when the body ends before its Content-Length, or is not text in its charset.

Each refusal is counted in `denoise_sfu_http_bodies_refused_total{reason}`.
"""

from __future__ import annotations

import asyncio
import codecs
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from sfu.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from sfu.signalling.jsonsafe import JsonRefused, loads

if TYPE_CHECKING:
    from sfu.metrics import Metrics

SDP_TYPE = "application/sdp"
JSON_TYPE = "application/json"
MAX_JSON_BYTES = 16 * 1024  # every JSON body this server takes is a few fields
ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate")  # aiohttp decodes the others itself
TEXT_CHARSETS = ("utf-8", "us-ascii")  # codec names (codecs.lookup) accepted for text bodies


def _count(metrics: Metrics | None, reason: str) -> None:
    if metrics is not None:
        metrics.http_bodies_refused.labels(reason).inc()


def _metrics_of(request: web.Request) -> Metrics | None:
    from sfu.context import CONTEXT

    ctx = request.app.get(CONTEXT)
    return ctx.metrics if ctx is not None else None


async def read_body(request: web.Request, max_bytes: int, timeout: float) -> bytes:
    """The whole (decoded) request body, at most `max_bytes`, within `timeout` seconds."""
    metrics = _metrics_of(request)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        _count(metrics, "encoding")
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r} is not accepted "
                                   "(identity, gzip or deflate)", "unsupported_encoding")
    declared = request.content_length
    if declared is not None and declared > max_bytes and encoding in ("", "identity"):
        _count(metrics, "too_large")
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {max_bytes}",
                              "body_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    _count(metrics, "too_large")
                    raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes",
                                          "body_too_large")
                chunks.append(chunk)
    except TimeoutError:
        _count(metrics, "timeout")
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s",
                             "body_timeout") from None
    except ConnectionResetError:  # the client went away mid-body: nobody reads the answer
        _count(metrics, "incomplete")
        gone = BadRequest("the connection was lost before the body was complete", "bad_body")
        gone.close = True
        raise gone from None
    except RequestPayloadError as err:
        reason = "encoding" if "encoding" in str(err).lower() else "incomplete"
        _count(metrics, reason)
        refused = BadRequest(f"cannot read the body: {str(err).strip()[:200]}",
                             "bad_encoding" if reason == "encoding" else "bad_body")
        refused.close = True  # what follows on this connection cannot be parsed
        raise refused from None
    return b"".join(chunks)


def decode_text(request: web.Request, body: bytes, what: str) -> str:
    """`body` as text in the request's charset (UTF-8 or ASCII only), else 415/400."""
    charset = (request.charset or "utf-8").strip().lower()
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = ""
    if codec not in TEXT_CHARSETS:
        _count(_metrics_of(request), "charset")
        raise UnsupportedMediaType(f"charset {charset[:40]!r} is not accepted for {what} "
                                   "(utf-8)", "unsupported_charset")
    try:
        return body.decode(codec)
    except UnicodeDecodeError:
        _count(_metrics_of(request), "charset")
        raise BadRequest(f"{what} body is not {codec} text", f"bad_{what.lower()}") from None


async def read_sdp(request: web.Request, max_bytes: int, timeout: float) -> str:
    """The body as SDP text: 415 unless application/sdp, 413 above `max_bytes`, 408 late."""
    if request.content_type.lower() != SDP_TYPE:
        _count(_metrics_of(request), "content_type")
        raise UnsupportedMediaType(f"Content-Type must be {SDP_TYPE}, not "
                                   f"{request.content_type[:60]!r}", "unsupported_media_type")
    try:
        body = await read_body(request, max_bytes, timeout)
    except PayloadTooLarge as err:
        raise PayloadTooLarge(err.message.replace("body", "SDP body", 1), "sdp_too_large") \
            from None
    return decode_text(request, body, "SDP")


async def read_json(request: web.Request, timeout: float,
                    max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The body as JSON (any value; callers check its shape): 415 unless application/json,
    413, 408, and 400 `bad_json` for invalid or too deeply nested JSON."""
    if request.content_type.lower() != JSON_TYPE:
        _count(_metrics_of(request), "content_type")
        raise UnsupportedMediaType(f"Content-Type must be {JSON_TYPE}, not "
                                   f"{request.content_type[:60]!r}", "unsupported_media_type")
    text = decode_text(request, await read_body(request, max_bytes, timeout), "JSON")
    try:
        return loads(text)
    except JsonRefused as err:
        _count(_metrics_of(request), "json")
        raise BadRequest(str(err), "bad_json") from None
