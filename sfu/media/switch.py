"""A sender's lifelong track whose source can change (aiortc senders stop when a track ends)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu.media.direct import DirectRtpSender, bind_calling_sender
from sfu.media.fanout import PacketTrack

FRAME_SAMPLES = 960  # one 20 ms Opus packet at 48 kHz


class SwitchTrack(MediaStreamTrack):
    """The track an RTCRtpSender holds for its whole life; its source can change.

    aiortc's sender stops for good when its track's `recv()` raises, so speakers who leave (whose
    tracks end) must not be handed to it directly. This track forwards the packets of its
    current source, waits while it has none, and renumbers pts so the RTP timeline of the
    transceiver never goes back when the source changes (gaps within one source are kept).

    Read by an aiortc `RTCRtpSender`, it takes the sender over (`sfu.media.direct`): its
    `PacketTrack` sources then write straight to the sender's stream, and a new source
    continues the same SSRC, sequence numbers and timeline (`DirectRtpSender.rebase`).
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._pending: asyncio.Task[Any] | None = None
        self._changed = asyncio.Event()
        self._offset: int | None = None  # added to the current source's pts
        self._next_pts: int | None = None  # the pts the next packet should have at least
        self._direct: DirectRtpSender | None = None
        self._pump: asyncio.Task[None] | None = None  # direct, for a source that is pulled
        self.packets = 0

    @property
    def source(self) -> MediaStreamTrack | None:
        return self._source

    @property
    def direct(self) -> DirectRtpSender | None:
        return self._direct

    def set_source(self, track: MediaStreamTrack | None) -> None:
        if track is self._source:
            return
        old, self._source = self._source, track
        self._offset = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._direct is not None:
            self._detach(old)
            self._direct.rebase()
            self._attach(track)
        self._changed.set()

    # -- direct: the sender's task parked here, sources write to its stream ----------------------

    def _attach(self, track: MediaStreamTrack | None) -> None:
        direct = self._direct
        if track is None or direct is None:
            return
        if isinstance(track, PacketTrack):
            track.attach(direct)
        else:
            self._pump = asyncio.ensure_future(self._pull_into(track, direct))

    def _detach(self, track: MediaStreamTrack | None) -> None:
        if isinstance(track, PacketTrack) and track.direct is self._direct:
            track.attach(None)
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def _pull_into(self, track: MediaStreamTrack, direct: DirectRtpSender) -> None:
        with contextlib.suppress(MediaStreamError):
            while self.readyState == "live" and self._source is track:
                packet = await track.recv()
                if isinstance(packet, av.Packet) and packet.pts is not None:
                    direct.send(bytes(packet), int(packet.pts),
                                int(packet.duration or FRAME_SAMPLES), None)
                    self.packets += 1

    async def _park(self) -> None:
        while self.readyState == "live":
            self._changed.clear()
            await self._changed.wait()
        raise MediaStreamError

    # -- pulled ----------------------------------------------------------------------------------

    async def recv(self) -> Any:
        if self._direct is None:
            direct = bind_calling_sender(self)
            if direct is not None:
                if self._pending is not None:
                    self._pending.cancel()
                    self._pending = None
                self._direct = direct
                self._attach(self._source)
                await self._park()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            if self._pending is None:
                self._pending = asyncio.ensure_future(source.recv())
            pending = self._pending
            try:
                packet = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                continue  # the source was switched while waiting
            except MediaStreamError:
                if self._source is source:  # the speaker is gone: wait for the next one
                    self._source = None
                    self._pending = None
                continue
            if pending is self._pending:
                self._pending = None
            if source is not self._source:
                continue
            self.packets += 1
            return self._restamp(packet)

    def _restamp(self, packet: Any) -> Any:
        if not isinstance(packet, av.Packet) or packet.pts is None:
            return packet
        if self._offset is None:
            self._offset = 0 if self._next_pts is None else self._next_pts - packet.pts
        pts = packet.pts + self._offset
        self._next_pts = pts + (packet.duration or FRAME_SAMPLES)
        if self._offset == 0:
            return packet
        copy = av.Packet(bytes(packet))  # the packet is shared with other subscribers
        copy.pts = pts
        copy.time_base = packet.time_base
        return copy

    def stop(self) -> None:
        super().stop()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._direct is not None:
            self._detach(self._source)
            self._direct = None
        self._changed.set()
