"""Prometheus metrics of one SFU process, on its own registry (so tests can run many apps).

The media pipeline records per-hop outcomes and packet latency here; the app wires room
gauges (read at scrape time), the event-loop lag monitor and engine statistics.

Names (all prefixed `denoise_sfu_`):
  rooms, participants, subscribers              gauges, read from the room registry
  frames_denoised_total                         10 ms hops that went out denoised
  frames_passed_through_total{reason}           hops that went out original: mode_off, late,
                                                engine_error, dtmf, call_progress, tone, music
  frames_dropped_total{reason}                  input or output frames dropped, by reason
  server_latency_seconds                        histogram, packet in to packet out
  event_loop_lag_seconds                        histogram, how late a timer fires
  engine_batch_size, engine_tick_seconds        histograms, one observation per engine tick
  http_requests_total{route,method,status}      signalling requests
  peer_connections{role}                        live aiortc peers (publisher, subscriber)
  peer_failures_total{reason}                   peers dropped: failed, timeout
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PREFIX = "denoise_sfu_"
CONTENT_TYPE = CONTENT_TYPE_LATEST
PASS_THROUGH_REASONS = ("mode_off", "late", "engine_error", "dtmf", "call_progress", "tone",
                        "music")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                   0.2, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class Metrics:
    """The metric objects of one SFU, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.rooms = Gauge(PREFIX + "rooms", "Rooms with at least one session", registry=reg)
        self.participants = Gauge(PREFIX + "participants", "Publishing participants",
                                  registry=reg)
        self.subscribers = Gauge(PREFIX + "subscribers", "Subscriptions to a participant",
                                 registry=reg)
        self.frames_denoised = Counter(PREFIX + "frames_denoised",
                                       "10 ms hops sent out denoised", registry=reg)
        self.frames_passed_through = Counter(
            PREFIX + "frames_passed_through", "10 ms hops sent out as the original audio",
            ["reason"], registry=reg)
        for reason in PASS_THROUGH_REASONS:
            self.frames_passed_through.labels(reason)
        self.frames_dropped = Counter(PREFIX + "frames_dropped", "Frames dropped, by reason",
                                      ["reason"], registry=reg)
        self.server_latency = Histogram(
            PREFIX + "server_latency_seconds", "Server-added latency, packet in to packet out",
            buckets=LATENCY_BUCKETS, registry=reg)
        self.event_loop_lag = Histogram(PREFIX + "event_loop_lag_seconds",
                                        "How late an event-loop timer fires",
                                        buckets=LAG_BUCKETS, registry=reg)
        self.engine_batch_size = Histogram(PREFIX + "engine_batch_size",
                                           "Streams in one engine tick", buckets=BATCH_BUCKETS,
                                           registry=reg)
        self.engine_tick_seconds = Histogram(PREFIX + "engine_tick_seconds",
                                             "Duration of one batched engine forward",
                                             buckets=TICK_BUCKETS, registry=reg)
        self.engine_streams = Gauge(PREFIX + "engine_streams", "Streams open on the engine",
                                    registry=reg)
        self.http_requests = Counter(PREFIX + "http_requests", "Signalling requests",
                                     ["route", "method", "status"], registry=reg)
        self.peer_connections = Gauge(PREFIX + "peer_connections", "Live peer connections",
                                      ["role"], registry=reg)
        for role in ("publisher", "subscriber"):
            self.peer_connections.labels(role)
        self.peer_failures = Counter(PREFIX + "peer_failures", "Peers dropped, by reason",
                                     ["reason"], registry=reg)

    def record_hop(self, passed_reason: str | None) -> None:
        """Count one output hop: denoised when `passed_reason` is None."""
        if passed_reason is None:
            self.frames_denoised.inc()
        else:
            self.frames_passed_through.labels(passed_reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    async def monitor_event_loop(self, interval: float = 0.1) -> None:
        """Observe timer lateness forever (run as a task; cancel to stop)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                start = loop.time()
                await asyncio.sleep(interval)
                self.event_loop_lag.observe(max(0.0, loop.time() - start - interval))
