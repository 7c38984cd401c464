"""Prometheus metrics of one SFU process, on its own registry (so tests can run many apps).

The media pipeline records packet latency and drops here; hop outcomes are synced from each
`DenoisedStream`'s counters (`sync_hops`); room gauges and engine statistics are read at
scrape time; the app runs the event-loop lag monitor.

Names (all prefixed `denoise_sfu_`):
  rooms, participants, subscribers              gauges, read from the room registry
  frames_denoised_total                         10 ms hops that went out denoised
  frames_passed_through_total{reason}           hops that went out original: mode_off, late,
                                                engine_error, dtmf, call_progress, tone, music
  frames_not_sent_total                         hops never sent to the engine while it computed
                                                an earlier late hop (they went out raw: late, or
                                                a bypass reason)
  frames_dropped_total{reason}                  input or output frames dropped, by reason
  server_latency_seconds                        histogram, packet in to packet out
  event_loop_lag_seconds                        histogram, how late a timer fires
  engine_ticks_total, engine_hops_total         read from the engine's stats at scrape time
  engine_batch_size                             histogram of streams per tick
  engine_tick_seconds, engine_forward_seconds   count/sum, plus p50/p99 gauges (`quantile`)
  engine_errors_total{reason}, engine_streams
  worker_connected, worker_streams,             with `--engine workers`, per worker (label
  worker_connects_total, worker_hops_sent_total  `worker`, its address): the node's view
  worker_round_trip_recent_seconds{quantile}     (denoiser.engine.prometheus)
  worker_errors_total{reason}
  http_requests_total{route,method,status}      signalling requests
  peer_failures_total{reason}                   peers dropped: failed, timeout
  http_connections                              open HTTP connections (sfu.http_guard)
  http_connections_dropped_total{reason}        connections closed by the server: limit (over
                                                max_connections), header_timeout, idle_timeout
  http_bodies_refused_total{reason}             request bodies refused (sfu.signalling.body):
                                                too_large, timeout, encoding, incomplete,
                                                charset, content_type, json
  sessions                                      sessions holding a slot (sfu.limits)
  sessions_refused_total{reason}                429s: identity, address, node
  sessions_remembered                           WHIP/WHEP session ids kept for their DELETE
                                                (at most 10,000, each for an hour or the
                                                token lifetime)
  ws_messages_refused_total{code}               room-socket messages answered `error`
  asyncio_tasks                                 tasks of the server's event loop (a leak shows)
  memory_trimmed_bytes_total                    heap pages given back by malloc_trim each minute
  process_resident_memory_bytes, process_open_fds, ...   (prometheus_client, unprefixed)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from denoiser.engine.prometheus import PREFIX

CONTENT_TYPE = CONTENT_TYPE_LATEST
PASS_THROUGH_REASONS = ("mode_off", "late", "engine_error", "dtmf", "call_progress", "tone",
                        "music")
CONNECTION_DROP_REASONS = ("limit", "header_timeout", "idle_timeout")
SESSION_CAPS = ("identity", "address", "node")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                   0.2, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def _task_count() -> float:
    """Tasks of the running event loop (scrapes run on it); 0 outside one."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0


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
        self.frames_not_sent = Counter(
            PREFIX + "frames_not_sent", "Hops never sent to the engine (it was behind)",
            registry=reg)
        self.frames_dropped = Counter(PREFIX + "frames_dropped", "Frames dropped, by reason",
                                      ["reason"], registry=reg)
        self.server_latency = Histogram(
            PREFIX + "server_latency_seconds", "Server-added latency, packet in to packet out",
            buckets=LATENCY_BUCKETS, registry=reg)
        self.event_loop_lag = Histogram(PREFIX + "event_loop_lag_seconds",
                                        "How late an event-loop timer fires",
                                        buckets=LAG_BUCKETS, registry=reg)
        self.http_requests = Counter(PREFIX + "http_requests", "Signalling requests",
                                     ["route", "method", "status"], registry=reg)
        self.peer_failures = Counter(PREFIX + "peer_failures", "Peers dropped, by reason",
                                     ["reason"], registry=reg)
        self.http_connections = Gauge(PREFIX + "http_connections", "Open HTTP connections",
                                      registry=reg)
        self.http_connections_dropped = Counter(
            PREFIX + "http_connections_dropped", "HTTP connections closed by the server, by "
            "reason", ["reason"], registry=reg)
        for reason in CONNECTION_DROP_REASONS:
            self.http_connections_dropped.labels(reason)
        self.http_bodies_refused = Counter(
            PREFIX + "http_bodies_refused", "Request bodies refused, by reason", ["reason"],
            registry=reg)
        self.sessions = Gauge(PREFIX + "sessions", "Sessions holding a slot (WHIP, WHEP, "
                              "WebSocket); each has at most one peer connection", registry=reg)
        self.sessions_remembered = Gauge(
            PREFIX + "sessions_remembered", "Ended WHIP/WHEP sessions remembered so that their "
            "DELETE answers 200, not 404 (bounded in count and time: sfu.signalling.ledger)",
            registry=reg)
        self.sessions_refused = Counter(
            PREFIX + "sessions_refused", "Sessions refused by a cap (429), by cap", ["reason"],
            registry=reg)
        for reason in SESSION_CAPS:
            self.sessions_refused.labels(reason)
        self.ws_messages_refused = Counter(
            PREFIX + "ws_messages_refused", "Room-socket messages answered `error`, by code "
            "(internal_error: a bug, never the client's fault)", ["code"], registry=reg)

        self.memory_trimmed = Counter(
            PREFIX + "memory_trimmed_bytes", "Resident bytes given back to the kernel by the "
            "periodic malloc_trim (sfu.memory_trim)", registry=reg)
        # process_resident_memory_bytes, process_open_fds, ...: what a leak shows first
        ProcessCollector(registry=reg)

        self.asyncio_tasks = Gauge(PREFIX + "asyncio_tasks", "Tasks of the event loop",
                                   registry=reg)
        self.asyncio_tasks.set_function(_task_count)

        self._hops_seen: dict[str, dict[str, int]] = {}

    def sync_hops(self, stream_id: str, counters: Mapping[str, int], final: bool = False) -> None:
        """Add what a stream's hop counters (`DenoisedStream.counters`: `denoised` and one
        count per pass-through reason; optionally `not_sent`, `DenoisedStream.hops_not_sent`)
        gained since the last sync; `final` forgets the stream."""
        seen = self._hops_seen.get(stream_id, {})
        for key, value in counters.items():
            delta = value - seen.get(key, 0)
            if delta > 0:
                if key == "denoised":
                    self.frames_denoised.inc(delta)
                elif key == "not_sent":
                    self.frames_not_sent.inc(delta)
                else:
                    self.frames_passed_through.labels(key).inc(delta)
        if final:
            self._hops_seen.pop(stream_id, None)
        else:
            self._hops_seen[stream_id] = dict(counters)

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
