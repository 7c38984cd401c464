"""Bounds on what one peer may make aiortc do per packet (issue 14): installed on every
receiver and transport by `sfu.media.receiver` (see its docstring for the whole receive path).

- `RtpGuard` wraps a receiver's `_handle_rtp_packet`: at most `MAX_SSRCS` distinct SSRCs
  (aiortc's router and receiver keep one entry per SSRC a packet names, so a peer spraying
  SSRCs would grow them without bound) and at most `MAX_RTP_RATE` packets a second;
- `RtcpGuard` wraps a transport's `_handle_rtcp_data`: at most `MAX_RTCP_RATE` datagrams a
  second, and NACKs may have at most `MAX_NACK_RATE` packets a second retransmitted (aiortc
  retransmits every sequence number a NACK names that is still in its 128-packet history).

Every drop is counted: `denoise_sfu_rtp_packets_total{outcome="ssrc_rejected"|"rate_limited"}`
and `denoise_sfu_rtcp_packets_total{outcome}`.
"""

from __future__ import annotations

import time
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket, RtpPacket
from prometheus_client import Counter

from sfu.media.metrics import MetricsLike, rtcp_packets

#: Distinct SSRCs one receiver accepts (a browser sends one per m-line; a restart may add one).
MAX_SSRCS = 4
#: RTP packets a second one receiver accepts (burst: twice that). Opus sends 50 (20 ms), or
#: 100 with 10 ms packets.
MAX_RTP_RATE = 200
#: RTCP datagrams a second one peer's transport handles (burst: twice that). A browser sends a
#: few a second per stream.
MAX_RTCP_RATE = 200
#: Sequence numbers a second a peer's NACKs may have retransmitted (burst: twice that).
MAX_NACK_RATE = 100


class TokenBucket:
    """`rate` tokens a second, at most `2 * rate` saved up (bursts after a quiet spell)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = 2.0 * rate
        self.tokens = self.capacity
        self._last = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class RtpGuard:
    """Wraps a receiver's `_handle_rtp_packet`: packets beyond `MAX_RTP_RATE` a second
    (`rate_limited`) or of more than `MAX_SSRCS` distinct SSRCs (`ssrc_rejected`) are dropped
    and counted; a rejected SSRC's entry in the transport's RTP router is removed again, so
    neither aiortc's router nor its per-SSRC statistics grow."""

    def __init__(self, receiver: RTCRtpReceiver, counter: Counter | None,
                 limit: int = MAX_SSRCS, rate: float = MAX_RTP_RATE) -> None:
        self.receiver = receiver
        self.ssrcs: set[int] = set()
        self.limit = limit
        self.bucket = TokenBucket(rate)
        self.rejected = 0
        self.rate_limited = 0
        self._rejected = counter.labels(outcome="ssrc_rejected") if counter is not None else None
        self._limited = counter.labels(outcome="rate_limited") if counter is not None else None
        self._inner = receiver._handle_rtp_packet

    async def __call__(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.ssrc not in self.ssrcs:
            if len(self.ssrcs) >= self.limit:
                self.rejected += 1
                if self._rejected is not None:
                    self._rejected.inc()
                router = getattr(self.receiver.transport, "_rtp_router", None)
                table = getattr(router, "ssrc_table", None)
                if isinstance(table, dict) and table.get(packet.ssrc) is self.receiver:
                    del table[packet.ssrc]
                return
            self.ssrcs.add(packet.ssrc)
        if not self.bucket.take():
            self.rate_limited += 1
            if self._limited is not None:
                self._limited.inc()
            return
        await self._inner(packet, arrival_time_ms=arrival_time_ms)


def guard_rtp(receiver: RTCRtpReceiver, counter: Counter | None) -> None:
    """Put an `RtpGuard` on `receiver` (idempotent); `counter` is `rtp_packets_total`."""
    if not isinstance(receiver.__dict__.get("_handle_rtp_packet"), RtpGuard):
        receiver._handle_rtp_packet = RtpGuard(receiver, counter)  # type: ignore[method-assign]


class RtcpGuard:
    """Wraps an `RTCDtlsTransport`'s `_handle_rtcp_data` (what aiortc calls for every RTCP
    datagram of the peer) with the same routing, bounded: see the module docstring."""

    def __init__(self, transport: Any, counter: Counter | None,
                 rate: float = MAX_RTCP_RATE, nack_rate: float = MAX_NACK_RATE) -> None:
        self.transport = transport
        self.datagrams = TokenBucket(rate)
        self.nacks = TokenBucket(nack_rate)
        self._counter = counter
        self.dropped = 0

    def _count(self, outcome: str) -> None:
        if outcome != "handled":
            self.dropped += 1
        if self._counter is not None:
            self._counter.labels(outcome=outcome).inc()

    async def __call__(self, data: bytes) -> None:
        if not self.datagrams.take():
            self._count("rate_limited")
            return
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self._count("malformed")
            return
        router = self.transport._rtp_router
        for packet in packets:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK \
                    and not self.nacks.take(len(packet.lost)):
                self._count("nack_limited")
                continue
            for recipient in router.route_rtcp(packet):
                await recipient._handle_rtcp_packet(packet)
            self._count("handled")


def guard_rtcp(pc: RTCPeerConnection, metrics: MetricsLike | None = None) -> int:
    """Put an `RtcpGuard` on every DTLS transport of `pc` (idempotent; after the remote
    description is set, when the transports exist). Returns how many it added."""
    counter = rtcp_packets(metrics.registry) if metrics is not None else None
    added = 0
    for transceiver in pc.getTransceivers():
        for side in (transceiver.receiver, transceiver.sender):
            transport = getattr(side, "transport", None)
            if transport is None or not hasattr(transport, "_handle_rtcp_data"):
                continue
            if isinstance(transport.__dict__.get("_handle_rtcp_data"), RtcpGuard):
                continue
            transport._handle_rtcp_data = RtcpGuard(transport, counter)
            added += 1
    return added
