"""Prometheus export of an engine's own statistics, read when Prometheus scrapes.

Both the SFU (`/metrics`, for its in-process or remote engine) and the worker service export
through `EngineCollector`. A `LocalEngine` keeps exact counts per batch size and timing series
in milliseconds; they are read here instead of being observed twice. A `RemoteEngine` (or a
`WorkerPool` of them) exports the node's view of each worker, labelled by its address:
connected or not, streams placed, round trips, errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.utils import floatToGoString

from denoiser.engine.stats import EngineStats, Series
from denoiser.worker.client import RemoteEngine

PREFIX = "denoise_sfu_"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def percentile_gauge(name: str, text: str, series: Series) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, f"{text}: percentile of recent ones", labels=["quantile"])
    for q in (50, 99):
        gauge.add_metric([str(q / 100)], (series.percentile(q) if series.count else 0.0) / 1e3)
    return gauge


def error_counter(name: str, text: str, errors: dict[str, int]) -> CounterMetricFamily:
    counter = CounterMetricFamily(name, text, labels=["reason"])
    for reason, n in sorted(errors.items()):
        counter.add_metric([reason], n)
    return counter


class EngineCollector:
    """Exports the statistics of the engine `get_engine()` returns (none: nothing)."""

    def __init__(self, get_engine: Callable[[], object | None]) -> None:
        self._get_engine = get_engine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        engine = self._get_engine()
        stats = getattr(engine, "stats", None)
        if isinstance(stats, EngineStats):
            yield from self._local(stats)
        compiles = getattr(engine, "compiles", None)
        if isinstance(compiles, dict):
            counter = CounterMetricFamily(
                PREFIX + "engine_compiles", "Model graphs traced or captured (when: start, or "
                "serving: a live tick waited for it)", labels=["when"])
            for when in ("start", "serving"):
                counter.add_metric([when], compiles.get(when, 0))
            yield counter
        workers = [engine] if isinstance(engine, RemoteEngine) else \
            getattr(engine, "workers", None)
        if workers:
            yield from self._remote(list(workers))
        live = getattr(engine, "live_streams", None)
        if live is not None:
            yield GaugeMetricFamily(PREFIX + "engine_streams", "Streams open on the engine",
                                    value=live)

    @staticmethod
    def _local(stats: EngineStats) -> Iterator[Metric]:
        yield CounterMetricFamily(PREFIX + "engine_ticks", "Engine ticks (batched forwards)",
                                  value=stats.ticks)
        yield CounterMetricFamily(PREFIX + "engine_hops", "Hops denoised by the engine",
                                  value=stats.hops)
        sizes = dict(stats.batch_sizes)
        cumulative = [(floatToGoString(b), sum(n for size, n in sizes.items() if size <= b))
                      for b in BATCH_BUCKETS]
        cumulative.append(("+Inf", sum(sizes.values())))
        batch = HistogramMetricFamily(PREFIX + "engine_batch_size", "Streams in one engine tick")
        batch.add_metric([], cumulative, sum_value=sum(s * n for s, n in sizes.items()))
        yield batch
        for name, series, text in (
                ("engine_tick_seconds", stats.tick_ms, "First hop of a tick to results"),
                ("engine_forward_seconds", stats.forward_ms, "Batched forward of one tick")):
            summary = SummaryMetricFamily(PREFIX + name, text)
            summary.add_metric([], count_value=series.count, sum_value=series.total / 1000.0)
            yield summary
            yield percentile_gauge(PREFIX + name.replace("_seconds", "_recent_seconds"), text,
                                   series)
        yield error_counter(PREFIX + "engine_errors", "Engine errors by reason", stats.errors)

    @staticmethod
    def _remote(workers: list[RemoteEngine]) -> Iterator[Metric]:
        label = ["worker"]
        connected = GaugeMetricFamily(PREFIX + "worker_connected",
                                      "1 while connected to the worker", labels=label)
        connects = CounterMetricFamily(PREFIX + "worker_connects",
                                       "Connections made to the worker", labels=label)
        hops = CounterMetricFamily(PREFIX + "worker_hops_sent", "Hops sent to the worker",
                                   labels=label)
        streams = GaugeMetricFamily(PREFIX + "worker_streams",
                                    "Streams of this node placed on the worker", labels=label)
        trip = GaugeMetricFamily(PREFIX + "worker_round_trip_recent_seconds",
                                 "TICK sent to its RESULT: percentile of recent ones",
                                 labels=["worker", "quantile"])
        errors = CounterMetricFamily(PREFIX + "worker_errors",
                                     "Worker requests that failed, by reason",
                                     labels=["worker", "reason"])
        for worker in workers:
            stats, address = worker.stats, [worker.address]
            connected.add_metric(address, 1.0 if worker.connected else 0.0)
            connects.add_metric(address, stats.connects)
            hops.add_metric(address, stats.hops_sent)
            streams.add_metric(address, worker.live_streams)
            for q in (50, 99):
                value = stats.round_trip_ms.percentile(q) if stats.round_trip_ms.count else 0.0
                trip.add_metric([worker.address, str(q / 100)], value / 1e3)
            for reason, n in sorted(stats.errors.items()):
                errors.add_metric([worker.address, reason], n)
        yield from (connected, connects, hops, streams, trip, errors)
