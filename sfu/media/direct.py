"""Send pre-encoded Opus payloads on an aiortc sender's RTP stream, without its task.

aiortc's `RTCRtpSender` pulls one packet at a time from its track in a task of its own: each
packet costs a wake-up of that task, an `RtpPacket`, SRTP and two awaits down to `sendto`
(about 45 us measured, issue 13). An SFU that hands the same payload to many listeners can
do better: the publisher's task sends it to every subscriber at once (`DirectRtpSender.send`,
synchronous, no task or future per packet per subscriber).

A `DirectRtpSender` takes over the RTP of one started `RTCRtpSender` and keeps everything a
browser needs of it: the sender's own SSRC, payload type, sequence numbers continuing from
the sender's (+1 per packet) and timestamps from its random origin, the `mid` and
`ssrc-audio-level` header extensions as negotiated, and the counters its RTCP task puts in
every sender report (packets, octets, the last RTP timestamp and its NTP time), so the
reports stay valid. The sender's RTP task stays parked on its track (see
`bind_calling_sender`), its RTCP task runs as before.

It reads aiortc's private state (name-mangled attributes, the `_run_rtp` frame): aiortc 1.x
as pinned in pyproject.toml; `tests/sfu/test_direct_send.py` fails if that changes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aioice.ice import StunProtocol
from aiortc import RTCRtpSender, clock
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

#: Whether tracks take over their senders (False: aiortc's own task sends, for comparison).
enabled = True

_S = "_RTCRtpSender__"  # aiortc's name-mangled private attributes of RTCRtpSender
_D = "_RTCDtlsTransport__"


class DirectRtpSender:
    """One subscriber's outgoing RTP stream, written straight to its ICE pair."""

    def __init__(self, sender: RTCRtpSender, payload_type: int, sequence_number: int,
                 timestamp_origin: int) -> None:
        self.sender = sender
        self.ssrc: int = sender._ssrc
        self.payload_type = payload_type
        self.sequence_number = sequence_number & 0xFFFF
        self.timestamp_origin = timestamp_origin & 0xFFFFFFFF
        self._mid: str | None = getattr(sender, _S + "mid")
        self._extensions = getattr(sender, _S + "rtp_header_extensions_map")
        self._offset: int | None = None  # added to the source's pts (None: set on next packet)
        self._next_ts: int | None = None  # our timeline position after the last packet
        self.packets_sent = 0
        self.octets_sent = 0
        self.packets_failed = 0
        self.packets_relayed = 0  # sent through a TURN relay's coroutine (a task each)
        self.last_timestamp: int | None = None  # RTP timestamp of the last packet sent
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        return not getattr(self.sender, _S + "rtp_exited").is_set()

    def rebase(self) -> None:
        """The source changed (a republished speaker): continue the timeline from here."""
        self._offset = None

    def send(self, payload: bytes, pts: int, samples: int, audio_level: int | None) -> bool:
        """Send one Opus payload at `pts` (48 kHz samples on the source's timeline) lasting
        `samples`; `audio_level` is -dBov (0-127) or None. False if it could not go out."""
        if self._offset is None:
            self._offset = 0 if self._next_ts is None else self._next_ts - pts
        ts = pts + self._offset
        if self._next_ts is not None and ts < self._next_ts:
            # A source that went back (restarted its timeline): keep ours going forward.
            self._offset += self._next_ts - ts
            ts = self._next_ts
        self._next_ts = ts + (samples or 960)
        packet = RtpPacket(payload_type=self.payload_type, marker=1,
                           sequence_number=self.sequence_number,
                           timestamp=(self.timestamp_origin + ts) & 0xFFFFFFFF,
                           ssrc=self.ssrc, payload=payload)
        packet.extensions.mid = self._mid
        if audio_level is not None:
            packet.extensions.audio_level = (False, min(127, max(0, audio_level)))
        if not self._write(packet.serialize(self._extensions)):
            self.packets_failed += 1
            return False
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        self.last_timestamp = packet.timestamp
        # What the sender's RTCP task puts in its next sender report.
        sender = self.sender
        setattr(sender, _S + "ntp_timestamp", clock.current_ntp_time())
        setattr(sender, _S + "rtp_timestamp", packet.timestamp)
        setattr(sender, _S + "octet_count", getattr(sender, _S + "octet_count") + len(payload))
        setattr(sender, _S + "packet_count", getattr(sender, _S + "packet_count") + 1)
        return True

    def _write(self, data: bytes) -> bool:
        dtls = self.sender.transport
        if getattr(dtls, "_state", None) != State.CONNECTED or not self.active:
            return False
        protected = dtls._tx_srtp.protect(data)
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return False
        protocol = pair.protocol
        if type(protocol).send_data is StunProtocol.send_data:  # plain UDP: send at once
            protocol.transport.sendto(protected, pair.remote_addr)
        else:  # a TURN relay: its send is a coroutine
            self.packets_relayed += 1
            task = asyncio.ensure_future(protocol.send_data(protected, pair.remote_addr))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        setattr(dtls, _D + "tx_bytes", getattr(dtls, _D + "tx_bytes", 0) + len(protected))
        setattr(dtls, _D + "tx_packets", getattr(dtls, _D + "tx_packets", 0) + 1)
        return True


def bind_calling_sender(track: Any) -> DirectRtpSender | None:
    """From inside `track.recv()`: the `DirectRtpSender` for the `RTCRtpSender` whose RTP task
    is calling it, continuing its sequence numbers and timestamp origin; None when the caller
    is anything else (a test reading the track, a `SwitchTrack`, another aiortc version).

    The track then keeps that task parked in `recv()` and sends through the returned object.
    """
    if not enabled:
        return None
    task = asyncio.current_task()
    coro = task.get_coro() if task is not None else None
    if getattr(coro, "__qualname__", "") != "RTCRtpSender._run_rtp":
        return None
    frame = getattr(coro, "cr_frame", None)
    if frame is None:
        return None
    local = frame.f_locals
    sender, codec = local.get("self"), local.get("codec")
    seq, origin = local.get("sequence_number"), local.get("timestamp_origin")
    if not isinstance(sender, RTCRtpSender) or sender.track is not track or codec is None \
            or not isinstance(seq, int) or not isinstance(origin, int):
        return None
    if not hasattr(sender, _S + "rtp_header_extensions_map"):
        return None
    return DirectRtpSender(sender, codec.payloadType, seq, origin)


def audio_level_dbov(samples: Any) -> int:
    """RFC 6465 level of float samples in [-1, 1], as the extension carries it (0-127)."""
    import numpy as np

    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float32)))) if len(samples) else 0.0
    if rms <= 0.0:
        return 127
    return int(min(127, max(0, round(-20.0 * np.log10(rms)))))
