"""aiortc's connect task losing its race with close is counted, not logged as an error.

Found by `bench fuzz`: a peer whose ICE transport closed while `RTCPeerConnection.__connect`
was between awaits left "Task exception was never retrieved ... InvalidStateError" in the log.
The race is driven here with real aiortc peers: the answerer's SCTP ICE transport is stopped
right after `setLocalDescription` has scheduled the connect task and before it runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from prometheus_client import CollectorRegistry

from sfu.media.connect_race import install_connect_race_handler
from sfu.media.metrics import peer_connects_aborted


async def _lose_the_race() -> None:
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    try:
        offerer.createDataChannel("fuzz")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        # The connect task is scheduled, not yet run: close its transport under it.
        assert answerer.sctp is not None
        await answerer.sctp.transport.transport.stop()
        for _ in range(5):
            await asyncio.sleep(0.05)
    finally:
        await offerer.close()
        await answerer.close()


def _run(registry: CollectorRegistry | None) -> list[dict[str, Any]]:
    """Run the race on a fresh loop; return what reached the loop's previous handler."""
    reached: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(lambda _loop, context: reached.append(context))
        if registry is not None:
            install_connect_race_handler(loop, registry)
        loop.run_until_complete(_lose_the_race())
        gc.collect()  # the finished task reports its exception when it is collected
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return reached


def test_without_the_handler_the_race_reaches_the_error_log() -> None:
    reached = _run(None)
    assert any("RTCIceTransport is closed" in str(c.get("exception")) for c in reached)


def test_the_race_is_counted_and_nothing_else_is_swallowed(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="sfu.media.connect_race"):
        reached = _run(registry)
    assert not any("RTCIceTransport is closed" in str(c.get("exception")) for c in reached)
    assert peer_connects_aborted(registry).labels("closed_during_connect")._value.get() >= 1
    assert any("closed while connecting" in r.getMessage() for r in caplog.records)

    # Any other unhandled exception still goes to the handler that was there before.
    loop = asyncio.new_event_loop()
    others: list[dict[str, Any]] = []
    try:
        loop.set_exception_handler(lambda _loop, context: others.append(context))
        install_connect_race_handler(loop, registry)
        loop.call_exception_handler({"message": "boom", "exception": RuntimeError("boom")})
    finally:
        loop.close()
    assert [str(c["exception"]) for c in others] == ["boom"]
