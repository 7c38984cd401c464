"""End to end: publisher peer -> SFU peer (low-latency receiver) -> SpeakerPipeline ->
subscriber peers, all real aiortc over the machine's interface (aioice offers no loopback).

Until denoiser.stream.DenoisedStream lands, the stream is a stand-in that delays by one hop
and halves the level, so the test can tell that the audio really went through it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu.bench.harness import ToneTrack
from sfu.media.encoder import OpusPacketEncoder
from sfu.media.pipeline import SpeakerPipeline
from sfu.media.receiver import install_for_track
from sfu.metrics import Metrics
from support.peers import connect

pytestmark = pytest.mark.timeout(60)

TONE_HZ = 440.0


class HalfGainStream:
    """DenoisedStream stand-in: one hop of delay, half the level, counts its hops."""

    def __init__(self) -> None:
        self.mode = "on"
        self.counters = {"denoised": 0}
        self._previous = np.zeros(480, dtype=np.float32)

    async def process_hops(self, raw: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0)  # a real stream awaits the engine's tick
        delayed = np.concatenate([self._previous, raw * 0.5])
        self._previous = delayed[-480:]
        self.counters["denoised"] += raw.size // 480
        return delayed[:raw.size]


async def collect(track: MediaStreamTrack, seconds: float) -> np.ndarray:
    """Decode what a subscriber hears for `seconds` (aiortc's default receive path)."""
    chunks = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = await asyncio.wait_for(track.recv(), timeout=end - time.monotonic())
        except (TimeoutError, MediaStreamError):
            break
        pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
        chunks.append(pcm / 32768.0)
    return np.concatenate(chunks) if chunks else np.zeros(0)


def tone_level(signal: np.ndarray) -> tuple[float, float]:
    """(RMS, share of the energy within 20 Hz of the tone)."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.shape[0]))) ** 2
    freqs = np.fft.rfftfreq(signal.shape[0], 1 / 48_000)
    near = spectrum[np.abs(freqs - TONE_HZ) < 20].sum()
    return float(np.sqrt(np.mean(signal ** 2))), float(near / spectrum.sum())


async def test_publish_denoise_encode_once_fan_out_to_real_peers() -> None:
    metrics = Metrics()
    publisher, sfu_in = RTCPeerConnection(), RTCPeerConnection()
    publisher.addTrack(ToneTrack(TONE_HZ, level=0.5))
    inbound: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    buffers = []

    @sfu_in.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        buffers.append(install_for_track(sfu_in, track))
        inbound.set_result(track)

    peers = [publisher, sfu_in]
    try:
        await connect(publisher, sfu_in)
        source = await asyncio.wait_for(inbound, 10)
        encoders_before = OpusPacketEncoder.instances_created
        stream = HalfGainStream()
        pipeline = SpeakerPipeline(source, stream, metrics)
        pipeline.start()

        # three subscribers over real peers, plus one that never reads (a stuck sender)
        listeners = []
        for _ in range(3):
            sfu_out, listener = RTCPeerConnection(), RTCPeerConnection()
            peers += [sfu_out, listener]
            sfu_out.addTrack(pipeline.subscribe())
            heard: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
            listener.on("track", heard.set_result)
            await connect(sfu_out, listener)
            listeners.append(await asyncio.wait_for(heard, 10))
        stuck = pipeline.subscribe()
        raw_out, raw_listener = RTCPeerConnection(), RTCPeerConnection()
        peers += [raw_out, raw_listener]
        raw_out.addTrack(pipeline.raw_subscribe())
        raw_heard: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        raw_listener.on("track", raw_heard.set_result)
        await connect(raw_out, raw_listener)
        raw_track = await asyncio.wait_for(raw_heard, 10)

        # one encoder per speaker for the denoised audio, one for the raw comparison: never
        # one per subscriber
        assert OpusPacketEncoder.instances_created - encoders_before == 2

        heard_audio = await asyncio.gather(*(collect(t, 2.5) for t in [*listeners, raw_track]))
        counters = pipeline.counters
        await pipeline.stop()
    finally:
        await asyncio.gather(*(pc.close() for pc in peers))

    # every subscriber heard the tone at half the level of the raw comparison (aiortc's
    # publisher upmixes mono to stereo at -3 dB before encoding: 0.5 peak -> 0.25 RMS)
    raw_rms, share = tone_level(heard_audio[3][24_000:])
    assert share > 0.9 and abs(raw_rms - 0.25) < 0.03, (raw_rms, share)
    for audio in heard_audio[:3]:
        assert audio.shape[0] > 48_000
        rms, share = tone_level(audio[24_000:])
        assert share > 0.9 and abs(rms / raw_rms - 0.5) < 0.05, (rms, raw_rms, share)

    # the low-latency receive path was in use, and every frame and hop is accounted for
    (jb,) = buffers
    assert jb.packets_released >= counters.frames_in > 100
    assert counters.hops_in + counters.hops_concealed == counters.hops_out + counters.hops_cancelled
    assert 0 <= 2 * (counters.frames_in - counters.frames_late) - counters.hops_in <= 2
    assert counters.packets_out == counters.hops_out // 2
    assert stream.counters["denoised"] == counters.hops_out
    # the stuck subscriber kept its newest 8 packets and counted the rest as dropped
    assert stuck.packets_queued > 50
    assert stuck.packets_dropped == stuck.packets_queued - 8
    # (a real subscriber's sender may also fall behind on a loaded machine: counted the same way)
    assert counters.subscriber_drops >= stuck.packets_dropped
    dropped = metrics.frames_dropped.labels("subscriber_queue")._value.get()
    assert dropped == counters.subscriber_drops
    # the server-added latency was observed once per packet, and is small on an idle machine
    samples = {s.name: s.value for m in metrics.server_latency.collect() for s in m.samples}
    assert samples["denoise_sfu_server_latency_seconds_count"] == counters.packets_out
    assert samples["denoise_sfu_server_latency_seconds_sum"] / counters.packets_out < 0.04
