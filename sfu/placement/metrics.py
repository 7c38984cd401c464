"""Prometheus families of the placement, read at scrape time (prefix `denoise_sfu_`).

  placement_decisions_total{decision}       joins: local, redirect, unavailable, no_capacity
  placement_claim_recent_seconds{quantile}  claim round trip to Redis, p50/p99 of recent ones
  placement_rooms_held                      rooms this node holds a claim on
  placement_rooms_lost_total                rooms another node took over (fencing)
  placement_rooms_released_total            rooms released when empty
  placement_lease_lapses_total              beats that found this node's lease had lapsed
  placement_redis_errors_total              exchanges with Redis that failed
  placement_redis_up                        1 while the last exchange with Redis worked
  placement_draining                        1 while this node drains
  placement_streams_total{decision}         streams on workers: placed, moved, no_free_slot,
                                            no_worker (--engine workers --redis)
  placement_workers{state}                  workers registered in Redis: live, draining
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from denoiser.engine.prometheus import PREFIX


class PlacementCollector:
    """Reads a `Placement` (and the engine, when it is a `RedisWorkerPool`)."""

    def __init__(self, get_placement: Callable[[], object | None],
                 get_engine: Callable[[], object | None]) -> None:
        self._placement = get_placement
        self._engine = get_engine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        placement = self._placement()
        if placement is not None:
            yield from self._rooms(placement)
        engine = self._engine()
        placements = getattr(engine, "placements", None)
        if placements is not None:
            streams = CounterMetricFamily(PREFIX + "placement_streams",
                                          "Stream placements on workers, by decision",
                                          labels=["decision"])
            for decision in ("placed", "moved", "no_free_slot", "no_worker"):
                streams.add_metric([decision], placements.get(decision, 0))
            yield streams
            workers = GaugeMetricFamily(PREFIX + "placement_workers",
                                        "Workers registered in Redis", labels=["state"])
            info = list(getattr(engine, "info", {}).values())
            workers.add_metric(["live"], sum(not w.draining for w in info))
            workers.add_metric(["draining"], sum(w.draining for w in info))
            yield workers

    @staticmethod
    def _rooms(placement: object) -> Iterator[Metric]:
        stats = placement.stats  # type: ignore[attr-defined]
        decisions = CounterMetricFamily(PREFIX + "placement_decisions",
                                        "Join placement decisions", labels=["decision"])
        for decision in ("local", "redirect", "unavailable", "no_capacity"):
            decisions.add_metric([decision], stats.decisions.get(decision, 0))
        yield decisions
        claim = GaugeMetricFamily(PREFIX + "placement_claim_recent_seconds",
                                  "Claim round trip to the coordinator: percentile of recent "
                                  "ones", labels=["quantile"])
        recent = np.asarray(stats.claim_seconds, dtype=np.float64)
        for q in (50, 99):
            claim.add_metric([str(q / 100)], float(np.percentile(recent, q)) if recent.size
                             else 0.0)
        yield claim
        held = getattr(placement, "held_rooms", None)
        yield GaugeMetricFamily(PREFIX + "placement_rooms_held", "Rooms held by this node",
                                value=len(held) if held is not None else 0)
        for name, text, value in (
                ("placement_rooms_lost", "Rooms another node took over", stats.rooms_lost),
                ("placement_rooms_released", "Rooms released when empty",
                 stats.rooms_released),
                ("placement_lease_lapses", "Beats that found the lease lapsed",
                 stats.lease_lapses),
                ("placement_redis_errors", "Failed exchanges with Redis", stats.redis_errors)):
            yield CounterMetricFamily(PREFIX + name, text, value=value)
        yield GaugeMetricFamily(PREFIX + "placement_redis_up",
                                "1 while the coordinator answers",
                                value=1.0 if placement.reachable else 0.0)  # type: ignore[attr-defined]
        yield GaugeMetricFamily(PREFIX + "placement_draining", "1 while this node drains",
                                value=1.0 if placement.draining else 0.0)  # type: ignore[attr-defined]
