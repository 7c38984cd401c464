"""What a WebSocket client may send: each message checked before anything acts on it."""

from __future__ import annotations

import logging
from typing import Any

from denoiser.stream.modes import MODES
from sfu.signalling.jsonsafe import MAX_DEPTH, JsonRefused, loads

log = logging.getLogger(__name__)


MAX_MESSAGE_BYTES = 64 * 1024  # larger text messages get an error and are dropped
HARD_MAX_MESSAGE_BYTES = 1024 * 1024  # larger frames close the socket (aiohttp, code 1009)


class MessageRefused(Exception):
    """A message is refused: answered with `{"type": "error", code, message}`."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code  # set when the session cannot go on


# -- message validation ---------------------------------------------------------------------

_FIELDS: dict[str, dict[str, type]] = {
    "join": {"token": str},
    "offer": {"sdp": str},
    "answer": {"sdp": str},
    "set_mode": {"mode": str},
    "listen": {"identity": str, "raw": bool},
    "leave": {},
}


def parse_message(text: str) -> dict[str, Any]:
    """The validated message in `text`, or MessageRefused."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise MessageRefused("message_too_large",
                            f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        message = loads(text, MAX_DEPTH)  # nested deeper than MAX_DEPTH: refused unparsed
    except JsonRefused as err:
        raise MessageRefused("bad_json", str(err)) from err
    if not isinstance(message, dict):
        raise MessageRefused("bad_message", "a message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise MessageRefused("bad_message", "a message needs a string 'type'")
    if kind not in _FIELDS:
        raise MessageRefused("unknown_type", f"unknown message type {kind[:40]!r}")
    for name, expected in _FIELDS[kind].items():
        if not isinstance(message.get(name), expected):
            raise MessageRefused("bad_message",
                                f"'{kind}' needs '{name}' ({expected.__name__})")
    mode = message.get("mode", "auto")
    if kind in ("join", "set_mode") and mode not in MODES:
        raise MessageRefused("bad_message", f"mode must be one of {', '.join(MODES)}")
    return message
