"""Who may use a worker: nodes that know its secret (the SFU's `--secret`), by challenge-response.

On every connection the worker sends a fresh 32-byte nonce (`os.urandom`); the node answers
`HMAC-SHA256(secret, label | nonce | protocol version | layout | node name)`, and the worker
compares it in constant time. A captured answer is worth nothing on another connection (another
nonce), and the version and layout inside the MAC keep a man in the middle from changing them
unnoticed. This keeps strangers off a worker's slots; it does not encrypt the audio, nor prove
the worker to the node, so workers and nodes belong on a private network (or under TLS or
WireGuard).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from denoiser.worker.protocol import MAC_BYTES, NONCE_BYTES

_LABEL = b"denoise-sfu worker auth v3\0"  # domain separation from every other use of the secret
_VERSION_LAYOUT = struct.Struct("<BB")


class Unauthorized(ValueError):
    """An AUTH without a valid answer to this connection's challenge."""


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def answer(secret: str, nonce: bytes, node: str, version: int, layout: int) -> bytes:
    """The node's MAC over this connection's challenge."""
    message = _LABEL + nonce + _VERSION_LAYOUT.pack(version, layout) + node.encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def check_answer(secret: str, nonce: bytes, node: str, version: int, layout: int,
                 mac: bytes) -> None:
    """Raise Unauthorized unless `mac` is `answer(secret, nonce, node, version, layout)`."""
    if not mac:
        raise Unauthorized("this worker needs a secret: start the node with the worker's secret")
    if len(mac) != MAC_BYTES or len(nonce) != NONCE_BYTES:
        raise Unauthorized("malformed answer")
    if not hmac.compare_digest(mac, answer(secret, nonce, node, version, layout)):
        raise Unauthorized("bad answer: the node's secret is not this worker's")
