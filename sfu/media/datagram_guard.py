"""What reaches a peer connection's UDP sockets before DTLS and SRTP see it (issue 14).

aioice hands every datagram that does not parse as STUN to the peer's DTLS transport, from any
source address, through an unbounded queue. aiortc's DTLS transport then ends the whole peer
connection on an empty datagram (`IndexError`) or on a datagram in the SRTP range longer than
libsrtp's 1,500-byte buffer (`ValueError`), and a STUN-looking datagram that aioice's parser
cannot unpack raises in the event loop's callback (an error in the log per packet). So one UDP
packet from anywhere could end a call (found by `denoise-sfu bench fuzz --targets rtp`).

`guard_datagrams(pc, metrics)` wraps `datagram_received` of each of the peer's ICE sockets
(after the local description is set: gathering made them):
- STUN (first byte 0-3, RFC 7983's demultiplexing) goes to aioice; a parser failure is dropped;
- anything else is passed on only when it is 1-1,500 bytes, comes from an address ICE knows for
  this peer (the remote side of a pair in its check list: a signalled candidate, or a
  peer-reflexive one learnt from an authenticated check), and the queue to DTLS holds fewer than
  `MAX_QUEUED` datagrams (a consumer that fell behind must not make memory grow).
Every drop is counted: `denoise_sfu_udp_datagrams_dropped_total{reason}`.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection
from prometheus_client import Counter

from sfu.media.metrics import MetricsLike, udp_datagrams_dropped

#: The largest datagram passed on: libsrtp's buffer (a larger SRTP packet ends the transport)
#: and more than any path MTU a peer's media uses.
MAX_DATAGRAM = 1500
#: Datagrams waiting for the DTLS transport, per ICE connection: 1 s of audio at 20 ms with RTCP
#: and a DTLS flight besides, several times over.
MAX_QUEUED = 256


class DatagramGuard:
    """Stands in for one `aioice.ice.StunProtocol.datagram_received` (see the module doc)."""

    def __init__(self, protocol: Any, counter: Counter | None) -> None:
        self._protocol = protocol
        self._original = protocol.datagram_received
        self._counter = counter
        self._known: frozenset[tuple[str, int]] = frozenset()
        self._known_pairs = -1

    def _drop(self, reason: str) -> None:
        if self._counter is not None:
            self._counter.labels(reason).inc()

    def _is_known(self, addr: tuple[str, int]) -> bool:
        connection = self._protocol.receiver
        pairs = getattr(connection, "_check_list", ())
        if len(pairs) != self._known_pairs:  # pairs are only ever added (or all cleared)
            self._known = frozenset(pair.remote_addr for pair in pairs)
            self._known_pairs = len(pairs)
        return addr in self._known

    def __call__(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not data or len(data) > MAX_DATAGRAM:
            self._drop("size")
            return
        if data[0] < 4:  # STUN
            try:
                self._original(data, addr)
            except Exception:  # aioice's parser raises struct.error and the like
                self._drop("malformed_stun")
            return
        if not self._is_known((addr[0], addr[1])):
            self._drop("unknown_source")
            return
        queue = getattr(self._protocol.receiver, "_queue", None)
        if queue is not None and queue.qsize() >= MAX_QUEUED:
            self._drop("queue_full")
            return
        self._original(data, addr)


def _connections(pc: RTCPeerConnection) -> list[Any]:
    found: list[Any] = []
    for transceiver in pc.getTransceivers():
        for side in (transceiver.receiver, transceiver.sender):
            dtls = getattr(side, "transport", None)
            ice = getattr(dtls, "transport", None)
            gatherer = getattr(ice, "iceGatherer", None)
            connection = getattr(gatherer, "_connection", None)
            if connection is not None and all(c is not connection for c in found):
                found.append(connection)
    return found


def guard_datagrams(pc: RTCPeerConnection, metrics: MetricsLike | None = None) -> int:
    """Put a `DatagramGuard` on every ICE socket of `pc` (idempotent; after the local
    description is set). Returns how many it added."""
    counter = udp_datagrams_dropped(metrics.registry) if metrics is not None else None
    added = 0
    for connection in _connections(pc):
        for protocol in getattr(connection, "_protocols", ()):
            if isinstance(protocol.__dict__.get("datagram_received"), DatagramGuard):
                continue
            protocol.datagram_received = DatagramGuard(protocol, counter)
            added += 1
    return added
