"""The WebSocket room protocol of the demo page: messages, sessions, and the hub."""

from sfu.signalling.ws.hub import WS_HUB, WsHub, setup
from sfu.signalling.ws.messages import MAX_MESSAGE_BYTES, MessageRefused, parse_message

__all__ = ["MAX_MESSAGE_BYTES", "WS_HUB", "MessageRefused", "WsHub", "parse_message", "setup"]
