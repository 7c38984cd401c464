"""Who may use a worker: nodes that know its secret (the SFU's `--secret`).

A node's HELLO carries `"<unix seconds>:<hex HMAC-SHA256(secret, node + '|' + seconds)>"`; the
worker accepts it within `MAX_SKEW_S` of its own clock. This keeps strangers off a worker's
slots; it does not encrypt the audio, so workers and nodes belong on a private network.
"""

from __future__ import annotations

import hashlib
import hmac
import time

MAX_SKEW_S = 60


class Unauthorized(ValueError):
    """A HELLO without a valid token for this worker's secret."""


def _mac(secret: str, node: str, seconds: int) -> str:
    return hmac.new(secret.encode(), f"{node}|{seconds}".encode(), hashlib.sha256).hexdigest()


def hello_token(secret: str, node: str, now: float | None = None) -> str:
    seconds = int(time.time() if now is None else now)
    return f"{seconds}:{_mac(secret, node, seconds)}"


def check_hello_token(secret: str, node: str, token: str, now: float | None = None) -> None:
    """Raise Unauthorized unless `token` is `hello_token(secret, node)` from within the skew."""
    seconds_text, _, mac = token.partition(":")
    if not token:
        raise Unauthorized("this worker needs a token: start the node with the worker's secret")
    if not seconds_text.isdigit() or not mac:
        raise Unauthorized("malformed token")
    seconds = int(seconds_text)
    if abs((time.time() if now is None else now) - seconds) > MAX_SKEW_S:
        raise Unauthorized(f"token time is more than {MAX_SKEW_S} s from the worker's clock")
    if not hmac.compare_digest(mac, _mac(secret, node, seconds)):
        raise Unauthorized("bad token: the node's secret is not this worker's")
