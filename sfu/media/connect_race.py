"""Count, rather than log as an error, aiortc's connect task losing its race with close.

`RTCPeerConnection.setLocalDescription` starts `RTCPeerConnection.__connect` as a task nobody
awaits. When the peer connection (or one of its ICE transports) is closed while that task is
between two of its awaits (a client that hangs up mid-handshake, a session that misses its
connect deadline), the task raises `InvalidStateError("RTCIceTransport is closed")` and asyncio
logs "Task exception was never retrieved" at error level when the task is collected. Nothing is
lost: the peer is already closed and its session released by our own close path. This handler
counts those in `denoise_sfu_peer_connects_aborted_total{reason="closed_during_connect"}` and
passes every other unhandled exception to the handler that was there before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiortc.exceptions import InvalidStateError
from prometheus_client import CollectorRegistry

from sfu.media.metrics import peer_connects_aborted

log = logging.getLogger(__name__)

_CONNECT_TASK = "RTCPeerConnection.__connect"


def _is_connect_race(context: dict[str, Any]) -> bool:
    exception = context.get("exception")
    future = context.get("future")
    if not isinstance(exception, InvalidStateError) or not isinstance(future, asyncio.Task):
        return False
    coro = future.get_coro()
    return getattr(coro, "__qualname__", "") == _CONNECT_TASK


def install_connect_race_handler(loop: asyncio.AbstractEventLoop,
                                 registry: CollectorRegistry) -> None:
    """Make `loop` count aiortc connect tasks that lost their race with close."""
    aborted = peer_connects_aborted(registry)
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_connect_race(context):
            aborted.labels("closed_during_connect").inc()
            log.info("peer connection closed while connecting",
                     extra={"error": str(context.get("exception"))})
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
