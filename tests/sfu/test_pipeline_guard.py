"""A slow engine must not make the pipeline fall behind: hops pass through as `late` instead,
and each packet's server-added latency stays within the pipeline's budget."""

from __future__ import annotations

import asyncio

import numpy as np

from sfu.bench.harness import ToneTrack
from sfu.media.pipeline import SpeakerPipeline
from sfu.media.receiver import PacketArrivals
from sfu.metrics import Metrics


class ArrivingToneTrack(ToneTrack):
    """The tone as a network source: each frame "arrives" at its real-time instant, and that
    instant is what server-added latency counts from (as with the low-latency receiver)."""

    def __init__(self) -> None:
        super().__init__(440.0, level=0.5)
        self.packet_arrivals = PacketArrivals()

    async def recv(self):
        frame = await super().recv()
        assert self._start is not None
        self.packet_arrivals.record(frame.pts, self._start + frame.pts / 48_000)
        return frame


class SlowEngineStream:
    """DenoisedStream stand-in whose engine answers after 30 ms (three hops' time)."""

    def __init__(self) -> None:
        self.mode = "on"
        self.deadline: float | None = 0.02
        self.counters = {"denoised": 0, "late": 0}
        self.deadlines: list[float] = []

    async def process_hops(self, raw: np.ndarray) -> np.ndarray:
        assert self.deadline is not None
        self.deadlines.append(self.deadline)
        hops = raw.size // 480
        if self.deadline >= 0.03:
            await asyncio.sleep(0.03)
            self.counters["denoised"] += hops
        else:
            await asyncio.sleep(self.deadline)
            self.counters["late"] += hops
        return raw


async def test_slow_engine_hops_pass_through_within_budget() -> None:
    metrics = Metrics()
    stream = SlowEngineStream()
    pipeline = SpeakerPipeline(ArrivingToneTrack(), stream, metrics, latency_budget=0.02)
    pipeline.record_latencies = True
    pipeline.start()
    await asyncio.sleep(1.0)
    await pipeline.stop()
    c = pipeline.counters
    assert c.frames_in >= 40 and c.hops_in == c.hops_out + c.hops_cancelled
    assert 2 * c.frames_in - 2 <= c.hops_in <= 2 * c.frames_in
    assert stream.counters["late"] == c.hops_out and stream.counters["denoised"] == 0
    # budget 20 ms minus 2 ms for encoding, shared by the two hops of each packet
    assert max(stream.deadlines) <= 0.018 + 1e-9
    assert len(pipeline.latencies) == c.packets_out >= 40
    # never falls behind real time (medians, so that a loaded CI machine does not flake)
    assert np.median(pipeline.latencies) < 0.025
    assert np.median(pipeline.latencies[-10:]) < 0.05


async def test_without_guard_the_same_engine_falls_behind() -> None:
    stream = SlowEngineStream()
    stream.deadline = 0.03
    pipeline = SpeakerPipeline(ArrivingToneTrack(), stream, Metrics(), latency_budget=None)
    pipeline.record_latencies = True
    pipeline.start()
    await asyncio.sleep(1.0)
    await pipeline.stop()
    # 2 x 30 ms per 20 ms of audio: latency grows without bound (what the guard prevents)
    assert pipeline.latencies[-1] > 0.2

