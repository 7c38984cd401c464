"""HTTP errors as JSON: `{"error": code, "message": text}` with the right status.

Handlers raise an `HttpError` subclass; `error_middleware` turns it (and aiohttp's own
404/405, and anything unexpected) into a JSON response, so a bad request never disturbs
anyone else and never leaks a traceback to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger(__name__)


class HttpError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal_error"
    close = False  # close the connection after the answer (a body left half read)

    def __init__(self, message: str, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class BadRequest(HttpError):
    status = 400
    code = "bad_request"


class Unauthorized(HttpError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        merged = {"WWW-Authenticate": 'Bearer realm="denoise-sfu"', **(headers or {})}
        super().__init__(message, code, merged)


class Forbidden(HttpError):
    status = 403
    code = "forbidden"


class NotFound(HttpError):
    status = 404
    code = "not_found"


class MethodNotAllowed(HttpError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(HttpError):
    status = 408
    code = "request_timeout"
    close = True


class PayloadTooLarge(HttpError):
    status = 413
    code = "payload_too_large"
    close = True


class UnsupportedMediaType(HttpError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(HttpError):
    """429: a session cap (per identity, per address, per node) is reached; `Retry-After`."""

    status = 429
    code = "too_many_sessions"

    def __init__(self, message: str, code: str | None = None,
                 headers: Mapping[str, str] | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code, {"Retry-After": str(retry_after), **(headers or {})})


class ServiceUnavailable(HttpError):
    status = 503
    code = "unavailable"


def json_error(status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None) -> web.Response:
    """The JSON body every error of this server carries."""
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=dict(headers or {}))


_AIOHTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                  408: "request_timeout", 413: "payload_too_large"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render `HttpError`, aiohttp's HTTP errors and unexpected exceptions as JSON."""
    try:
        return await handler(request)
    except HttpError as err:
        log.info("request rejected", extra={"method": request.method, "path": request.path,
                                            "status": err.status, "code": err.code})
        response = json_error(err.status, err.code, err.message, err.headers)
        if err.close:
            response.force_close()
        return response
    except RequestPayloadError as err:  # a body read elsewhere than sfu.signalling.body
        response = json_error(400, "bad_body", f"cannot read the body: {str(err).strip()[:200]}")
        response.force_close()
        return response
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _AIOHTTP_CODES.get(err.status, f"http_{err.status}")
        headers = {k: v for k, v in err.headers.items() if k.lower() == "allow"}
        return json_error(err.status, code, err.reason, headers)
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return json_error(500, "internal_error", "internal server error")
