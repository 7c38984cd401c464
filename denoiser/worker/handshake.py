"""The handshake of protocol version 3, both sides: HELLO, CHALLENGE, AUTH, WELCOME.

    node                                   worker
    HELLO(name, layout)          ->
                                 <-        CHALLENGE(nonce: 32 fresh random bytes, secret?)
    AUTH(HMAC(secret, nonce...)) ->
                                 <-        WELCOME(format, slots, heartbeat timeout)  or ERROR

The worker reads at most `MAX_HANDSHAKE_PAYLOAD` bytes per message before the AUTH is checked
(a header that declares more is refused unread), and the whole handshake has a deadline
(`WorkerServer.handshake_timeout`): a stranger costs the worker one small read, one HMAC and a
close. Every way a handshake fails raises `HandshakeFailed` with a short `reason`, which the
worker counts by reason (`worker_handshake_failures_total{reason}`) and logs at a bounded rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from denoiser.worker import protocol as wire
from denoiser.worker.auth import Unauthorized, answer, check_answer, new_nonce
from denoiser.worker.protocol import MessageType, ProtocolError, VersionMismatch

log = logging.getLogger(__name__)

#: The reasons a handshake fails, as counted (metric label values).
REASONS = ("timeout", "closed", "version", "too_large", "malformed", "unexpected",
           "unauthorized", "too_many_pending", "internal")


class HandshakeFailed(Exception):
    """A node's handshake failed; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 secret: str | None, welcome: wire.Welcome) -> wire.Hello:
    """The worker's side: the node's HELLO once it has answered the challenge (WELCOME sent).

    Raises HandshakeFailed for anything else (the caller sends ERROR and closes); the caller
    puts the deadline around it."""
    try:
        kind, payload = await wire.read_message(reader, wire.MAX_HANDSHAKE_PAYLOAD)
        if kind is not MessageType.HELLO:
            raise HandshakeFailed("unexpected", f"expected HELLO first, got {kind.name}")
        hello = wire.decode_hello(payload)
        nonce = new_nonce()
        writer.write(wire.encode_challenge(nonce, secret is not None))
        kind, payload = await wire.read_message(reader, wire.MAX_HANDSHAKE_PAYLOAD)
        if kind is not MessageType.AUTH:
            raise HandshakeFailed("unexpected", f"expected AUTH after HELLO, got {kind.name}")
        mac = wire.decode_auth(payload)
        if secret is not None:
            check_answer(secret, nonce, hello.node, wire.PROTOCOL_VERSION, hello.layout, mac)
    except VersionMismatch as exc:
        raise HandshakeFailed("version", str(exc)) from None
    except wire.TooLarge as exc:
        raise HandshakeFailed("too_large", str(exc)) from None
    except ProtocolError as exc:
        raise HandshakeFailed("malformed", str(exc)) from None
    except Unauthorized as exc:
        raise HandshakeFailed("unauthorized", f"unauthorized: {exc}") from None
    except (asyncio.IncompleteReadError, ConnectionError):
        raise HandshakeFailed("closed", "the node closed the connection mid-handshake") from None
    writer.write(wire.encode_welcome(welcome))
    return hello


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: str,
                secret: str | None, layout: int) -> wire.Welcome:
    """The node's side: HELLO, answer the challenge, the worker's WELCOME. Raises
    ProtocolError (VersionMismatch for a worker of another release) when refused; the caller
    puts the deadline around it."""
    writer.write(wire.encode_hello(node, layout))
    try:
        kind, payload = await wire.read_message(reader, wire.MAX_HANDSHAKE_PAYLOAD)
        _raise_if_error(kind, payload)
        if kind is not MessageType.CHALLENGE:
            raise ProtocolError(f"expected CHALLENGE, got {kind.name}")
        challenge = wire.decode_challenge(payload)
        # Without a secret the AUTH is empty; a worker that needs one says so in its ERROR
        # (and counts it), which is where its operator looks.
        mac = answer(secret, challenge.nonce, node, wire.PROTOCOL_VERSION, layout) \
            if secret else b""
        writer.write(wire.encode_auth(mac))
        kind, payload = await wire.read_message(reader, wire.MAX_HANDSHAKE_PAYLOAD)
        _raise_if_error(kind, payload)
        if kind is not MessageType.WELCOME:
            raise ProtocolError(f"expected WELCOME, got {kind.name}")
        return wire.decode_welcome(payload)
    except VersionMismatch as exc:
        raise VersionMismatch(
            f"the worker speaks protocol version {exc.version} and this node "
            f"{wire.PROTOCOL_VERSION}: run SFU nodes and workers of the same release",
            exc.version) from None


def _raise_if_error(kind: MessageType, payload: bytes) -> None:
    if kind is MessageType.ERROR:
        reason = wire.decode_error(payload)
        if reason.startswith("protocol version"):
            raise VersionMismatch(f"the worker refused this node's protocol: {reason}",
                                  wire.PROTOCOL_VERSION)
        raise ProtocolError(f"the worker refused: {reason}")


class FailureLog:
    """Handshake failures, logged at most once per `every_s` seconds (with the counts since the
    last line), so that a flood of bad connections cannot make the worker spend its time
    writing logs."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._last = -float("inf")
        self._since: Counter[str] = Counter()

    def note(self, reason: str, peer: str, detail: str) -> None:
        self._since[reason] += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        log.warning("node handshake failed; closing its connection",
                    extra={"peer": peer, "reason": reason, "error": detail,
                           "failures_since_last_log": dict(self._since)})
        self._since.clear()
        self._last = now
