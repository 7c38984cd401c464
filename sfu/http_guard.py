"""HTTP connections under limits: a node-wide cap, a header read timeout, an idle timeout.

aiohttp on its own keeps an idle keep-alive connection for an hour, waits for a request's
headers forever (a half-sent request held its socket for as long as the client liked), and
accepts any number of connections. `GuardedRunner` (what `serve` runs, and the tests) is an
`AppRunner` whose connections are `GuardedHandler`s:

  - over `max_connections` open connections, a new one is answered `503` (the JSON error
    body) and closed at once;
  - from the first byte of a request to the end of its headers, at most `header_timeout`
    seconds; a slower (or half-sent) request is dropped without an answer;
  - an idle connection is closed after `idle_timeout` seconds (aiohttp's keep-alive timer,
    which also runs from the moment a connection opens, so a connection that never sends a
    byte goes too).

What aiohttp's parser refuses (not HTTP, a header line over 8190 bytes...) is answered with
the JSON error body too, counted as `http_requests_total{route="unparsed"}`. Bodies have their
own deadline (`body_timeout`, sfu.signalling.body). Each drop is counted in
`denoise_sfu_http_connections_dropped_total{reason}`; `denoise_sfu_http_connections` is the
number open.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from sfu.context import CONTEXT

if TYPE_CHECKING:
    from sfu.metrics import Metrics
    from sfu.settings import Settings


class ConnectionGuard:
    """The open-connection count of one server, its limits, and its counters."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.max_connections = settings.max_connections
        self.header_timeout = settings.header_timeout
        self.metrics = metrics
        self.open = 0
        if metrics is not None:
            metrics.http_connections.set_function(lambda: self.open)

    def unparsed(self, status: int) -> None:
        """A request aiohttp could not parse, counted with the app's requests."""
        if self.metrics is not None:
            self.metrics.http_requests.labels("unparsed", "-", str(status)).inc()

    def dropped(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.http_connections_dropped.labels(reason).inc()


def _busy_response() -> bytes:
    body = json.dumps({"error": "too_many_connections",
                       "message": "this node has its maximum of open connections"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the guard's cap and header timeout.

    A request is "pending" from the moment its headers are parsed until its response is
    finished; while none is pending, bytes that arrive are the start of the next request's
    headers and arm the header timer, which the parsed headers disarm.
    """

    def __init__(self, manager: Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._counted = False
        self._finished = 0  # responses finished on this connection
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.dropped("limit")
            assert isinstance(transport, asyncio.Transport)
            transport.write(_busy_response())
            self.force_close()
            return
        guard.open += 1
        self._counted = True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._disarm()  # the headers arrived (the body, if any, has its own deadline)
        elif (self._header_timer is None and self._request_count == self._finished
              and not self._upgraded and self.transport is not None):
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self._guard.header_timeout,
                                                 self._header_timeout, parsed)

    async def finish_response(self, request: BaseRequest, resp: StreamResponse,
                              start_time: float | None) -> tuple[StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._finished += 1

    def _header_timeout(self, parsed: int) -> None:
        self._header_timer = None
        if self._request_count == parsed and self.transport is not None:
            self._guard.dropped("header_timeout")
            self.force_close()

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        """aiohttp's answer to what it cannot parse (a header line too long, a body that
        does not inflate...), as this server's JSON error body instead of text."""
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            raise ConnectionError("response already sent, cannot send the error")
        if status >= 500:
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "internal server error"
        else:
            self.logger.debug("bad request from %s", request.remote, exc_info=exc)
            code = ("payload_too_large" if status == 413 else
                    "bad_encoding" if isinstance(exc, ContentEncodingError) else "bad_request")
            text = (message or str(exc or "") or "bad request").strip()[:200]
        self._guard.unparsed(status)
        response = web.json_response({"error": code, "message": text}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # A body that failed to decode is raised again when aiohttp drains the rest of it
        # after the 400 went out: expected, so not an error in the log.
        if isinstance(kwargs.get("exc_info"), RequestPayloadError):
            self.logger.debug(*args, **kwargs)
        else:
            super().log_exception(*args, **kwargs)

    def _process_keepalive(self) -> None:
        # aiohttp's idle timer (keepalive_timeout = idle_timeout): count the connections it
        # closes. A private aiohttp hook; tests/sfu/test_hostile_http.py checks it still runs.
        was_open = self.transport is not None
        super()._process_keepalive()
        if was_open and self.transport is None:
            self._guard.dropped("idle_timeout")


class GuardedServer(Server):
    """aiohttp's low-level server, making `GuardedHandler`s."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An `AppRunner` for a `create_app` app, under its settings' connection limits."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        ctx = app[CONTEXT]
        kwargs.setdefault("keepalive_timeout", ctx.settings.idle_timeout)
        # After an answer to a request whose body was not read to its end (408, 413, ...),
        # aiohttp reads and drops the rest for up to this long before closing.
        kwargs.setdefault("lingering_time", min(10.0, ctx.settings.body_timeout))
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(ctx.settings, ctx.metrics)

    async def _make_server(self) -> Server:
        plain = await super()._make_server()
        # The same server as AppRunner's (its handler, request factory and handler kwargs).
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=plain._loop, guard=self.guard, **plain._kwargs)
