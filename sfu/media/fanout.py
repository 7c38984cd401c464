"""Fan one speaker's encoded packets out to many subscribers without letting one stall others.

Each subscriber gets a `PacketTrack`: an audio MediaStreamTrack whose `recv()` returns the
speaker's `av.Packet`s (the very same objects for every subscriber); aiortc's RTCRtpSender
packs them without re-encoding. Each track has a small bounded queue: when a subscriber's
sender does not keep up, its oldest packet is dropped and counted, and the speaker and the
other subscribers carry on untouched.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

DEFAULT_QUEUE_PACKETS = 8  # 160 ms of 20 ms packets


class PacketTrack(MediaStreamTrack):
    """One subscriber's view of a speaker: yields encoded packets, drops oldest when behind."""

    kind = "audio"

    def __init__(self, max_queue: int = DEFAULT_QUEUE_PACKETS,
                 on_drop: Callable[[int], None] | None = None) -> None:
        super().__init__()
        if max_queue < 1:
            raise ValueError("a subscriber queue must hold at least one packet")
        self._queue: deque[av.Packet] = deque()
        self._max_queue = max_queue
        self._wakeup = asyncio.Event()
        self._on_drop = on_drop
        self.packets_queued = 0
        self.packets_dropped = 0
        self.packets_sent = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def put(self, packet: av.Packet) -> None:
        """Queue one packet (never blocks); drops the oldest if the queue is full."""
        if self.readyState != "live":
            return
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.packets_dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)
        self._queue.append(packet)
        self.packets_queued += 1
        self._wakeup.set()

    async def recv(self) -> av.Packet:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self.packets_sent += 1
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._wakeup.set()  # wake a pending recv() so that it raises MediaStreamError


class FanOut:
    """The set of subscriber tracks of one speaker's encoded stream."""

    def __init__(self, max_queue: int = DEFAULT_QUEUE_PACKETS,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self._tracks: set[PacketTrack] = set()
        self._max_queue = max_queue
        self._on_drop = on_drop
        self.packets_published = 0

    def __len__(self) -> int:
        return len(self._tracks)

    def subscribe(self) -> PacketTrack:
        track = PacketTrack(self._max_queue, self._on_drop)
        self._tracks.add(track)
        track.on("ended", lambda: self._tracks.discard(track))
        return track

    def unsubscribe(self, track: MediaStreamTrack) -> None:
        if track in self._tracks:
            self._tracks.discard(track)
            track.stop()

    def publish(self, packet: av.Packet) -> None:
        self.packets_published += 1
        for track in list(self._tracks):
            track.put(packet)

    def close(self) -> None:
        for track in list(self._tracks):
            track.stop()
        self._tracks.clear()
