"""A speaker who leaves gives back what their pipeline held at once, not at the next full
collection: PyAV encodes through a filter graph whose FFmpeg thread pool has a thread per
core, and a pipeline sits in reference cycles (its task, callbacks), so `bench soak` saw
two threads per departed speaker pile up until the cycle collector ran."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from denoiser.stream import DenoisedStream
from sfu.bench.harness import ToneTrack
from sfu.media.encoder import OpusPacketEncoder
from sfu.media.pipeline import SpeakerPipeline
from sfu.metrics import Metrics

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="FFmpeg makes no thread pool on one core"),
]


def live_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_stopped_pipelines_free_their_encoder_threads_without_the_collector(
        gain_engine) -> None:
    speakers = 4
    gc.collect()
    gc.disable()  # the collector must not be what frees them
    try:
        before = live_threads()
        pipelines = [SpeakerPipeline(ToneTrack(440.0), DenoisedStream(gain_engine, f"s{i}"),
                                     Metrics()) for i in range(speakers)]
        for pipeline in pipelines:
            pipeline.raw_subscribe()  # the comparison encoder too
            pipeline.start()
        await asyncio.sleep(0.5)
        encoding = live_threads()
        for pipeline in pipelines:
            await pipeline.stop()
        after = live_threads()
    finally:
        gc.enable()
    assert all(p.counters.packets_out > 0 for p in pipelines)  # they did encode
    # two encoders per speaker, each with FFmpeg threads: visible while they encode ...
    assert encoding - before >= 2 * speakers
    # ... and gone once the speakers left, though `pipelines` still holds every pipeline
    assert encoding - after >= 2 * speakers
    assert all(p.encoder.closed and p.raw_encoder is not None and p.raw_encoder.closed
               for p in pipelines)


def test_a_closed_encoder_refuses_frames_and_keeps_its_timeline() -> None:
    import numpy as np

    encoder = OpusPacketEncoder()
    assert len(encoder.encode(np.zeros(960, dtype=np.float32))) == 1
    encoder.close()
    assert encoder.closed and encoder.next_pts == 960
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(np.zeros(960, dtype=np.float32))
