"""/metrics over a real server: the text parses and carries every family the operator needs."""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from denoiser.engine.local import LocalEngine
from sfu.metrics import Metrics
from support.sfu import SfuFactory


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_text_parses_and_has_every_family(sfu_factory: SfuFactory,
                                                        gain_engine: LocalEngine) -> None:
    sfu = await sfu_factory(gain_engine)
    gain_engine.open_stream("probe")
    for _ in range(5):
        await gain_engine.process("probe", np.zeros(480, dtype=np.float32))
    gain_engine.close_stream("probe")
    await asyncio.sleep(0.3)  # let the event-loop monitor observe a few timers
    async with sfu.session.get(sfu.url("/healthz")) as resp:
        assert resp.status == 200
    async with sfu.session.get(sfu.url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        got = samples(await resp.text())
    p = "denoise_sfu_"
    assert got[(p + "rooms", ())] == 0 and got[(p + "participants", ())] == 0
    assert got[(p + "sessions_remembered", ())] == 0
    assert (p + "memory_trimmed_bytes_total", ()) in got
    assert got[("process_resident_memory_bytes", ())] > 0
    assert got[(p + "frames_denoised_total", ())] == 0
    for reason in ("mode_off", "late", "engine_error", "dtmf", "call_progress", "tone", "music"):
        assert got[(p + "frames_passed_through_total", (("reason", reason),))] == 0
    assert (p + "server_latency_seconds_count", ()) in got
    assert got[(p + "event_loop_lag_seconds_count", ())] >= 1
    assert got[(p + "engine_ticks_total", ())] >= 5
    assert got[(p + "engine_hops_total", ())] == 5
    assert got[(p + "engine_batch_size_count", ())] == got[(p + "engine_ticks_total", ())]
    assert got[(p + "engine_batch_size_bucket", (("le", "1.0"),))] >= 5
    assert got[(p + "engine_tick_seconds_count", ())] >= 5
    assert (p + "engine_forward_recent_seconds", (("quantile", "0.99"),)) in got
    assert got[(p + "engine_streams", ())] == 0
    key = (p + "http_requests_total", (("method", "GET"), ("route", "/healthz"),
                                       ("status", "200")))
    assert got[key] == 1


def test_sync_hops_counts_each_hop_once() -> None:
    metrics = Metrics()
    metrics.sync_hops("s1", {"denoised": 3, "late": 1, "music": 0})
    metrics.sync_hops("s1", {"denoised": 5, "late": 1, "music": 2})
    metrics.sync_hops("s2", {"denoised": 1, "late": 0, "music": 0}, final=True)
    metrics.sync_hops("s1", {"denoised": 6, "late": 2, "music": 2, "not_sent": 1}, final=True)
    got = samples(metrics.render().decode())
    assert got[("denoise_sfu_frames_not_sent_total", ())] == 1
    assert ("denoise_sfu_frames_passed_through_total", (("reason", "not_sent"),)) not in got
    assert got[("denoise_sfu_frames_denoised_total", ())] == 7
    assert got[("denoise_sfu_frames_passed_through_total", (("reason", "late"),))] == 2
    assert got[("denoise_sfu_frames_passed_through_total", (("reason", "music"),))] == 2
