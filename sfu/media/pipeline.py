"""One speaker's audio path: decode once, denoise hop by hop, encode once, fan out.

A single task reads the publisher's decoded frames, converts them to mono float32 at 48 kHz,
cuts exact 10 ms hops, awaits `stream.process_hops` with each frame's hops (the DenoisedStream
decides what comes back: denoised, or the original when late or bypassed), joins them into 20 ms
frames, encodes each ONCE and hands the same `av.Packet` to every subscriber's track.

Timeline and gaps (decided here, documented in docs/latency.md):
- Output pts follow the publisher's RTP timeline, so they never go back.
- A gap of up to 100 ms (lost packets) is filled with silence through the denoiser, so the
  model state and the timeline stay continuous (counted as `hop_concealed`).
- A longer gap is the publisher pausing: subscribers get nothing (their own jitter buffer
  plays comfort noise / silence), and the output pts jump over the gap.
- A frame older than the timeline (late, duplicate) is dropped and counted.

A task that raises is never left silent (issue 14): the failure is logged and counted
(`denoise_sfu_pipeline_failures_total{action}`); the first time, the pipeline restarts with
fresh per-frame state in pass-through (hops skip the denoiser, counted `hop_degraded`: the
call goes on undenoised rather than dropping); a second failure stops it and calls
`on_failure(exc)`, with which the room registry removes the participant and tells its client.
A publisher's track that ends while the pipeline runs (an RTCP BYE: aiortc never decodes that
track again) calls `on_ended()` the same way: a registered participant is never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from sfu.media.direct import audio_level_dbov
from sfu.media.encoder import DEFAULT_COMPLEXITY, SAMPLE_RATE, TIME_BASE, OpusPacketEncoder
from sfu.media.fanout import DEFAULT_QUEUE_PACKETS, FanOut, PacketTrack
from sfu.media.forward import ForwardGate, Payload, opus_packet_samples
from sfu.media.hops import HOP_SIZE, FrameAssembler, FrameConverter, HopCutter
from sfu.media.metrics import MetricsLike, media_events, pipeline_failures
from sfu.media.receiver import PacketArrivals

logger = logging.getLogger(__name__)

MAX_CONCEALED_SAMPLES = SAMPLE_RATE // 10  # 100 ms
# Wall seconds a packet may spend in the server (packet in -> packet out): DESIGN.md's budget
# for everything but the model (tick wait <= 10 ms, forward <= 5 ms, decode and encode < 3 ms).
# The model's algorithmic latency comes on top: 20 ms for the default model (DFN3 fine-tuned at
# look-ahead 1), as in the design; 30 ms with the original DFN3 (models/MODEL_CARD.md).
# Measured: giving the engine only what a 40 ms total leaves after a 30 ms model (8 ms) sent
# 70-100 % of hops through undenoised on a 2-core machine (docs/latency.md).
DEFAULT_LATENCY_BUDGET = 0.020
ENCODE_MARGIN = 0.002  # kept back from the budget for encoding and fan-out
MAX_RESTARTS = 1  # pipeline task failures survived (in pass-through) before giving up


class HopStream(Protocol):
    """What the pipeline needs of `denoiser.stream.DenoisedStream`."""

    mode: str

    async def process_hops(self, raw: np.ndarray) -> np.ndarray: ...


@dataclass
class PipelineCounters:
    """Every frame, hop and packet that went in, out, or was dropped (for the bench)."""

    frames_in: int = 0
    frames_late: int = 0
    frames_bad: int = 0
    hops_in: int = 0
    hops_concealed: int = 0
    hops_stream_error: int = 0
    hops_out: int = 0
    hops_cancelled: int = 0  # in flight when the pipeline stopped
    publisher_pauses: int = 0
    samples_paused: int = 0
    packets_out: int = 0
    raw_packets_out: int = 0
    subscriber_drops: int = 0
    packets_forwarded: int = 0  # the publisher's own payloads sent on (sfu.media.forward)
    frames_replaced: int = 0  # decoded frames not encoded: a forwarded payload filled the slot
    hops_forwarded: int = 0  # hops of the payloads forwarded and never decoded (mode_off)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SpeakerPipeline:
    """The audio path of one publisher's track (see module docstring)."""

    def __init__(self, source: MediaStreamTrack, stream: HopStream, metrics: MetricsLike,
                 *, bitrate: int = 32_000, max_queue: int = DEFAULT_QUEUE_PACKETS,
                 arrivals: PacketArrivals | None = None,
                 latency_budget: float | None = DEFAULT_LATENCY_BUDGET,
                 complexity: int = DEFAULT_COMPLEXITY, forward: bool = True) -> None:
        if source.kind != "audio":
            raise ValueError(f"SpeakerPipeline needs an audio track, got {source.kind!r}")
        self.source = source
        self.stream = stream
        self.metrics = metrics
        self.counters = PipelineCounters()
        self._arrivals = arrivals if arrivals is not None else getattr(
            source, "packet_arrivals", None)
        self._bitrate = bitrate
        self._complexity = complexity
        self._converter = FrameConverter(SAMPLE_RATE)
        self._cutter = HopCutter(HOP_SIZE)
        self._assembler = FrameAssembler()
        self._raw_assembler = FrameAssembler()
        self.encoder = OpusPacketEncoder(bitrate, complexity=complexity)
        self.raw_encoder: OpusPacketEncoder | None = None  # created on the first raw_subscribe
        self._fanout = FanOut(max_queue, self._count_drop)
        self._raw_fanout = FanOut(max_queue, self._count_drop)
        self._expected_pts: int | None = None  # next input sample (48 kHz) on the timeline
        self._task: asyncio.Task[None] | None = None
        self._events = media_events(metrics.registry)
        self._forwarded_event = self._events.labels(event="packet_forwarded")
        self._failures = pipeline_failures(metrics.registry)
        self._drops = metrics.frames_dropped
        self.restarts = 0
        self.degraded = False  # after a restart: hops skip the denoiser
        self.failure: BaseException | None = None  # what stopped the task for good
        #: Called (from the task) when the pipeline gave up; the registry removes the speaker.
        self.on_failure: Callable[[BaseException], None] | None = None
        #: Called (from the task) when the publisher's track ended while the pipeline ran.
        self.on_ended: Callable[[], None] | None = None
        self.latencies: list[float] = []  # kept only when `record_latencies` (bench)
        self.record_latencies = False
        # The stream's own deadline per hop, tightened so that no packet waits past the budget.
        self._latency_budget = latency_budget
        self._base_deadline: float | None = getattr(stream, "deadline", None)
        self._guard = latency_budget is not None and hasattr(stream, "deadline")
        # Mode off: forward the publisher's payloads instead of decoding and re-encoding them,
        # where the receive path lets us see packets before they are decoded.
        self._gate = ForwardGate(int(getattr(stream, "latency_samples", 0)))
        buffer = getattr(source, "rtp_buffer", None)
        if forward and buffer is not None and hasattr(buffer, "tap"):
            buffer.tap = self._on_packet

    # -- public API -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self.stream.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.stream.mode = value

    @property
    def subscriber_count(self) -> int:
        return len(self._fanout) + len(self._raw_fanout)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        buffer = getattr(self.source, "rtp_buffer", None)
        if buffer is not None and getattr(buffer, "tap", None) == self._on_packet:
            buffer.tap = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fanout.close()
        self._raw_fanout.close()
        self.encoder.close()
        if self.raw_encoder is not None:
            self.raw_encoder.close()
        self._converter.close()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def subscribe(self) -> PacketTrack:
        """A new track of the denoised packets, for one subscriber's RTCRtpSender."""
        return self._fanout.subscribe()

    def raw_subscribe(self) -> PacketTrack:
        """A new track of the undenoised audio (encoded once too), for the comparison."""
        if self.raw_encoder is None:
            self.raw_encoder = OpusPacketEncoder(self._bitrate, start_pts=self.encoder.next_pts,
                                                 complexity=self._complexity)
        return self._raw_fanout.subscribe()

    def unsubscribe(self, track: MediaStreamTrack) -> None:
        self._fanout.unsubscribe(track)
        self._raw_fanout.unsubscribe(track)

    # -- the task -----------------------------------------------------------------------------

    def _count(self, event: str, n: int = 1) -> None:
        self._events.labels(event=event).inc(n)

    def _tighten_deadline(self, arrived: float) -> None:
        """Give the stream only what is left of this packet's budget: when the engine is slow,
        hops pass through as `late` (counted by the stream) instead of the pipeline falling
        behind, since two 10 ms hops each waiting a full deadline would outrun real time."""
        left = self._latency_budget - ENCODE_MARGIN - (time.monotonic() - arrived)  # type: ignore[operator]
        base = self._base_deadline
        self.stream.deadline = max(0.0, left if base is None else min(base, left))  # type: ignore[attr-defined]

    def _count_drop(self, n: int) -> None:
        self.counters.subscriber_drops += n
        self._drops.labels("subscriber_queue").inc(n)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._pump()
                    self._ended()  # the publisher's track ended (RTCP BYE, decoder stopped)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.restarts >= MAX_RESTARTS:
                        self._give_up(exc)
                        return
                    self.restarts += 1
                    self._failures.labels("restarted").inc()
                    logger.exception("speaker pipeline failed; restarting it in pass-through "
                                     "(restart %d of %d)", self.restarts, MAX_RESTARTS)
                    self._reset_after_failure()
        finally:
            self._fanout.close()
            self._raw_fanout.close()

    async def _pump(self) -> None:
        while True:
            try:
                frame = await self.source.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                raise TypeError(f"an audio track gave a {type(frame).__name__}")
            await self._handle_frame(frame)

    def _ended(self) -> None:
        self._count("track_ended")
        logger.info("speaker track ended; its participant is removed")
        if self.on_ended is not None:
            try:
                self.on_ended()
            except Exception:
                logger.exception("pipeline end handler failed")

    def _give_up(self, exc: Exception) -> None:
        self.failure = exc
        self._failures.labels("removed").inc()
        logger.error("speaker pipeline failed again after %d restart(s); removing the "
                     "participant", self.restarts, exc_info=exc)
        if self.on_failure is not None:
            try:
                self.on_failure(exc)
            except Exception:
                logger.exception("pipeline failure handler failed")

    def _reset_after_failure(self) -> None:
        """Fresh per-frame state (any of it may be what broke) and pass-through from now on;
        the output timeline goes on where it was, so subscribers hear no jump back."""
        self.degraded = True
        self._converter.close()
        self._converter = FrameConverter(SAMPLE_RATE)
        self._cutter = HopCutter(HOP_SIZE)
        self._assembler = FrameAssembler()
        self._raw_assembler = FrameAssembler()
        self.encoder.close()
        self.encoder = OpusPacketEncoder(self._bitrate, start_pts=self.encoder.next_pts,
                                         complexity=self._complexity)
        if self.raw_encoder is not None:
            self.raw_encoder.close()
            self.raw_encoder = OpusPacketEncoder(self._bitrate,
                                                 start_pts=self.raw_encoder.next_pts,
                                                 complexity=self._complexity)

    async def _handle_frame(self, frame: av.AudioFrame) -> None:
        received = time.monotonic()
        self.counters.frames_in += 1
        self._count("frame_in")
        arrived = self._arrivals.pop(frame.pts) if self._arrivals is not None else None
        try:
            samples = self._converter.convert(frame)
        except (ValueError, TypeError) as exc:
            logger.warning("dropping unconvertible audio frame: %s", exc)
            self.counters.frames_bad += 1
            self._drops.labels("input_bad").inc()
            return
        start = self._timeline_position(frame)
        if start is not None and self._expected_pts is not None:
            gap = start - self._expected_pts
            if gap <= -samples.shape[0]:
                self.counters.frames_late += 1
                self._drops.labels("input_late").inc()
                return
            if gap > 0 and self._gate.forwarded_through(self._expected_pts, start):
                self.encoder.skip(gap)  # forwarded payloads filled it: no pause, no loss
                if self.raw_encoder is not None:
                    self.raw_encoder.skip(gap)
            elif 0 < gap <= MAX_CONCEALED_SAMPLES:
                await self._process(np.zeros(gap, dtype=np.float32), concealed=True,
                                    arrived=arrived or received)
            elif gap > MAX_CONCEALED_SAMPLES:
                self.counters.publisher_pauses += 1
                self.counters.samples_paused += gap
                self._count("publisher_pause")
                self.encoder.skip(gap)
                if self.raw_encoder is not None:
                    self.raw_encoder.skip(gap)
        if start is not None:
            self._expected_pts = start + samples.shape[0]
        mode = self.stream.mode
        await self._process(samples, concealed=False, arrived=arrived or received)
        self._gate.frame_processed(mode, self._expected_pts)

    def _on_packet(self, packet: RtpPacket, timestamp: int, arrived: float) -> bool:
        """Each RTP packet as it arrives, before decoding: forward it (mode off) and say
        whether it must be decoded too (sfu.media.forward). Runs inside aiortc's receive
        path, where an exception would end the peer's reception: a failure decodes instead."""
        try:
            return self._forward_packet(packet, timestamp, arrived)
        except Exception:
            logger.exception("forwarding failed; decoding the packet instead")
            return True

    def _forward_packet(self, packet: RtpPacket, timestamp: int, arrived: float) -> bool:
        extension = packet.extensions.audio_level
        payload = Payload(timestamp, opus_packet_samples(packet.payload), packet.payload,
                          None if extension is None else extension[1])
        forwarded, decode = self._gate.route(payload, self.stream.mode)
        for item in forwarded:
            out = av.Packet(item.data)
            out.pts = out.dts = item.timestamp
            out.time_base = TIME_BASE
            out.duration = item.samples
            self._fanout.publish(out, item.audio_level, item.data)
            self._raw_fanout.publish(out, item.audio_level, item.data)
            self.counters.packets_forwarded += 1
            self._forwarded_event.inc()
        if forwarded and not decode:  # the stream never sees these hops: count them where
            hops = payload.samples // HOP_SIZE  # it would have (its mode_off outcome)
            self.counters.hops_forwarded += hops
            outcomes = getattr(self.stream, "counters", None)
            if isinstance(outcomes, dict) and "mode_off" in outcomes:
                outcomes["mode_off"] += hops
        if forwarded:
            latency = time.monotonic() - arrived
            self.metrics.server_latency.observe(latency)
            if self.record_latencies:
                self.latencies.append(latency)
        return decode

    def _timeline_position(self, frame: av.AudioFrame) -> int | None:
        if frame.pts is None:
            return None
        if frame.time_base is None:
            return int(frame.pts)
        return round(frame.pts * frame.time_base * SAMPLE_RATE)

    async def _process(self, samples: np.ndarray, *, concealed: bool, arrived: float) -> None:
        hops = list(self._cutter.push(samples))
        if not hops:
            return
        n = len(hops)
        if concealed:
            self.counters.hops_concealed += n
            self._count("hop_concealed", n)
        else:
            self.counters.hops_in += n
            self._count("hop_in", n)
        raw = hops[0] if n == 1 else np.concatenate(hops)
        if self._guard and not self.degraded:
            self._tighten_deadline(arrived)
        try:
            if self.degraded:  # restarted after a failure: the denoiser is skipped
                self._count("hop_degraded", n)
                out = raw
            else:
                # All of the frame's hops in one request: the engine runs them in one tick.
                out = await self.stream.process_hops(raw)
            if out.shape != raw.shape:
                raise ValueError(f"stream returned shape {out.shape} for {raw.shape}")
        except asyncio.CancelledError:
            self.counters.hops_cancelled += n
            raise
        except Exception:
            logger.exception("DenoisedStream failed; sending the original hops")
            self.counters.hops_stream_error += n
            self._count("hop_stream_error", n)
            out = raw
        self.counters.hops_out += n
        for frame in self._assembler.push(out):
            if self._gate.covers(self.encoder.next_pts):
                self.encoder.skip(frame.shape[0])  # the publisher's payload went out instead
                self.counters.frames_replaced += 1
                continue
            level = audio_level_dbov(frame)
            for packet in self.encoder.encode(frame):
                self._fanout.publish(packet, level)
                self.counters.packets_out += 1
                self._count("packet_out")
                latency = time.monotonic() - arrived
                self.metrics.server_latency.observe(latency)
                if self.record_latencies:
                    self.latencies.append(latency)
        if self.raw_encoder is not None:
            for frame in self._raw_assembler.push(raw):
                if self._gate.covers(self.raw_encoder.next_pts):
                    self.raw_encoder.skip(frame.shape[0])
                    continue
                for packet in self.raw_encoder.encode(frame):
                    self._raw_fanout.publish(packet)
                    self.counters.raw_packets_out += 1
                    self._count("raw_packet_out")
