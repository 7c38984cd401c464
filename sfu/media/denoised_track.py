"""Library use: wrap any aiortc audio track in a denoised one.

    engine = LocalEngine(load_default_model())
    await engine.start()
    clean = DenoisedAudioTrack(remote_track, DenoisedStream(engine, "alice"))
    pc.addTrack(clean)        # or record it, or feed it to your own mixer

`DenoisedAudioTrack.recv()` returns 20 ms mono s16 `av.AudioFrame`s at 48 kHz whatever the
source sends (any rate, channels or frame size), delayed by the engine's latency. This is the
decoded-audio face of the same path the SFU runs; the SFU itself encodes once per speaker and
fans packets out (`SpeakerPipeline`) instead of handing frames to one encoder per listener.
"""

from __future__ import annotations

import fractions
from collections import deque

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from denoiser.stream import DenoisedStream
from sfu.media.hops import FRAME_SIZE, FrameAssembler, FrameConverter, HopCutter

SAMPLE_RATE = 48_000
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class DenoisedAudioTrack(MediaStreamTrack):
    """An audio track whose frames are `source`'s audio run through `stream`."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, stream: DenoisedStream) -> None:
        super().__init__()
        if source.kind != "audio":
            raise ValueError(f"can only denoise an audio track, not {source.kind!r}")
        self.source, self.stream = source, stream
        self._convert = FrameConverter(SAMPLE_RATE)
        self._cutter = HopCutter(stream.hop_size)
        self._assembler = FrameAssembler(FRAME_SIZE)
        self._ready: deque[np.ndarray] = deque()
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        while not self._ready:
            frame = await self.source.recv()  # MediaStreamError ends this track too
            if not isinstance(frame, av.AudioFrame):
                raise TypeError(f"an audio track gave a {type(frame).__name__}")
            hops = list(self._cutter.push(self._convert.convert(frame)))
            if hops:  # the frame's hops in one engine request
                out = await self.stream.process_hops(np.concatenate(hops))
                self._ready.extend(self._assembler.push(out))
        samples = self._ready.popleft()
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.time_base, frame.pts = SAMPLE_RATE, TIME_BASE, self._pts
        self._pts += FRAME_SIZE
        return frame

    def stop(self) -> None:
        super().stop()
        self.stream.close()
        self._convert.close()
