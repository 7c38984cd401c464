"""Fan one speaker's encoded packets out to many subscribers without letting one stall others.

Each subscriber gets a `PacketTrack`: an audio MediaStreamTrack of the speaker's packets (the
very same `av.Packet`s and payload bytes for every subscriber). Two ways out:

- direct (the default once an aiortc `RTCRtpSender` reads the track, or the `SwitchTrack`
  above it): the first `recv()` binds the track to its sender (`sfu.media.direct`) and parks
  the sender's task; from then on `FanOut.publish` writes each packet to every subscriber's
  SRTP stream at once, in the publisher's task: no queue, no task or future per packet per
  subscriber. A packet that cannot go out (transport not connected) is counted as dropped.
- pulled (anything else reading `recv()`: tests, a sender of another aiortc version): a small
  bounded queue per track; when a reader does not keep up its oldest packet is dropped and
  counted, and the speaker and the other subscribers carry on untouched.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu.media.direct import DirectRtpSender, bind_calling_sender

DEFAULT_QUEUE_PACKETS = 8  # 160 ms of 20 ms packets
FRAME_SAMPLES = 960


class PacketTrack(MediaStreamTrack):
    """One subscriber's view of a speaker: yields encoded packets, drops oldest when behind."""

    kind = "audio"

    def __init__(self, max_queue: int = DEFAULT_QUEUE_PACKETS,
                 on_drop: Callable[[int], None] | None = None) -> None:
        super().__init__()
        if max_queue < 1:
            raise ValueError("a subscriber queue must hold at least one packet")
        self._queue: deque[tuple[av.Packet, bytes | None, int | None]] = deque()
        self._max_queue = max_queue
        self._wakeup = asyncio.Event()
        self._on_drop = on_drop
        self._direct: DirectRtpSender | None = None
        self.packets_queued = 0
        self.packets_dropped = 0
        self.packets_sent = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def direct(self) -> DirectRtpSender | None:
        """The sender this track writes to directly (None: it is pulled)."""
        return self._direct

    def attach(self, direct: DirectRtpSender | None) -> None:
        """Write to `direct` from now on (None: go back to being pulled)."""
        self._direct = direct
        if direct is not None:
            while self._queue:  # what was waiting goes out first, in order
                self._send(*self._queue.popleft())

    def put(self, packet: av.Packet, payload: bytes | None = None,
            audio_level: int | None = None) -> None:
        """Send or queue one packet (never blocks); a full queue drops its oldest."""
        if self.readyState != "live":
            return
        if self._direct is not None:
            self._send(packet, payload, audio_level)
            return
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self._dropped()
        self._queue.append((packet, payload, audio_level))
        self.packets_queued += 1
        self._wakeup.set()

    def _send(self, packet: av.Packet, payload: bytes | None, audio_level: int | None) -> None:
        direct = self._direct
        assert direct is not None
        if packet.pts is None:
            self._dropped()
            return
        if direct.send(bytes(packet) if payload is None else payload, int(packet.pts),
                       int(packet.duration or FRAME_SAMPLES), audio_level):
            self.packets_sent += 1
        else:
            self._dropped()

    def _dropped(self) -> None:
        self.packets_dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)

    async def recv(self) -> av.Packet:
        if self._direct is None:
            direct = bind_calling_sender(self)
            if direct is not None:  # an RTCRtpSender's task: park it, send directly
                self.attach(direct)
                await self._park()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.readyState != "live":
            raise MediaStreamError
        self.packets_sent += 1
        return self._queue.popleft()[0]

    async def _park(self) -> None:
        while self.readyState == "live":
            self._wakeup.clear()
            await self._wakeup.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        self._direct = None
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

    @property
    def tracks(self) -> frozenset[PacketTrack]:
        return frozenset(self._tracks)

    def subscribe(self) -> PacketTrack:
        track = PacketTrack(self._max_queue, self._on_drop)
        self._tracks.add(track)
        track.on("ended", lambda: self._tracks.discard(track))
        return track

    def unsubscribe(self, track: MediaStreamTrack) -> None:
        if track in self._tracks:
            self._tracks.discard(track)
            track.stop()

    def publish(self, packet: av.Packet, audio_level: int | None = None,
                payload: bytes | None = None) -> None:
        """The same packet (and the same payload bytes: `payload`, else the packet's) to
        every subscriber."""
        self.packets_published += 1
        if not self._tracks:
            return
        if payload is None:
            payload = bytes(packet)
        for track in list(self._tracks):
            track.put(packet, payload, audio_level)

    def close(self) -> None:
        for track in list(self._tracks):
            track.stop()
        self._tracks.clear()
