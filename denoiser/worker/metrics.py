"""Prometheus metrics of the worker service: its engine's (as on an SFU) and its connections."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from denoiser.engine.prometheus import PREFIX, EngineCollector
from denoiser.worker.handshake import REASONS
from denoiser.worker.server import WorkerServer


class WorkerCollector:
    """`denoise_sfu_engine_*` of the worker's engine, plus `denoise_sfu_worker_*`:

    worker_nodes                   connections open (SFU nodes)
    worker_ticks_total             TICK messages received
    worker_entries_total{status}   stream entries answered: ok, full, unknown, error
    worker_protocol_errors_total   connections closed for breaking the protocol
    worker_unauthorized_total      of those, handshakes without a valid answer to the challenge
    worker_handshake_failures_total{reason}  every failed handshake, by reason
                                   (`denoiser.worker.handshake.REASONS`)
    worker_handshakes_open         connections in their handshake now
    worker_heartbeat_timeouts_total  nodes dropped for silence past --heartbeat-timeout
    """

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.engine = EngineCollector(lambda: server.engine)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.engine.collect()
        stats = self.server.stats
        yield GaugeMetricFamily(PREFIX + "worker_nodes", "SFU nodes connected",
                                value=stats.connections_open)
        yield CounterMetricFamily(PREFIX + "worker_ticks", "TICK messages received",
                                  value=stats.ticks)
        entries = CounterMetricFamily(PREFIX + "worker_entries", "Stream entries answered",
                                      labels=["status"])
        for status in ("ok", "full", "unknown", "error"):
            entries.add_metric([status], stats.entries[status])
        yield entries
        yield CounterMetricFamily(PREFIX + "worker_protocol_errors",
                                  "Connections closed for breaking the protocol",
                                  value=stats.protocol_errors)
        yield CounterMetricFamily(PREFIX + "worker_unauthorized",
                                  "Handshakes refused for their answer to the challenge",
                                  value=stats.unauthorized)
        failures = CounterMetricFamily(PREFIX + "worker_handshake_failures",
                                       "Handshakes that failed, by reason", labels=["reason"])
        for reason in REASONS:
            failures.add_metric([reason], stats.handshake_failures[reason])
        yield failures
        yield GaugeMetricFamily(PREFIX + "worker_handshakes_open",
                                "Connections in their handshake now",
                                value=stats.handshakes_open)
        yield CounterMetricFamily(PREFIX + "worker_heartbeat_timeouts",
                                  "Nodes dropped for silence past the heartbeat timeout",
                                  value=stats.heartbeat_timeouts)
