"""A sender's lifelong track whose source can change (aiortc senders stop when a track ends)."""

from __future__ import annotations

import asyncio
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

FRAME_SAMPLES = 960  # one 20 ms Opus packet at 48 kHz


class SwitchTrack(MediaStreamTrack):
    """The track an RTCRtpSender holds for its whole life; its source can change.

    aiortc's sender stops for good when its track's `recv()` raises, so speakers who leave (whose
    tracks end) must not be handed to it directly. This track forwards the packets of its
    current source, waits while it has none, and renumbers pts so the RTP timeline of the
    transceiver never goes back when the source changes (gaps within one source are kept).
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._pending: asyncio.Task[Any] | None = None
        self._changed = asyncio.Event()
        self._offset: int | None = None  # added to the current source's pts
        self._next_pts: int | None = None  # the pts the next packet should have at least
        self.packets = 0

    @property
    def source(self) -> MediaStreamTrack | None:
        return self._source

    def set_source(self, track: MediaStreamTrack | None) -> None:
        if track is self._source:
            return
        self._source = track
        self._offset = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._changed.set()

    async def recv(self) -> Any:
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
        self._changed.set()
