"""Helpers of `bench fuzz` and `bench soak` that decide a verdict: the fuzzer's own valid tokens
must outlive any run (a 100,000-case run, 70 minutes, once saw its valid split offers refused
`token_expired` after the first hour), and the soak's RSS is judged once the server is warm."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from sfu.auth import verify_token
from sfu.bench.fuzz import cases
from sfu.bench.fuzz.cases import FuzzEnv


def test_tokens_are_cached_and_issued_anew_before_they_expire(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cases, "TOKEN_TTL", 2)
    system = cast(Any, SimpleNamespace(secret="s" * 32))
    env = FuzzEnv(system, "room", "speaker", "", "", [])
    first = env.token("r", "alice", "publish")
    assert env.token("r", "alice", "publish") == first  # cached
    time.sleep(1.1)  # past half its lifetime
    second = env.token("r", "alice", "publish")
    assert second != first
    claims = verify_token(system.secret, second)
    assert claims.room == "r" and claims.identity == "alice"


def test_soak_judges_the_rss_once_warm() -> None:
    from sfu.bench.soak import rss_trend

    # a cold start's climb, then a plateau: flat
    climb_then_plateau = [(60.0 * m, r) for m, r in
                          enumerate([110, 125, 135, 140, 141, 141, 142, 142, 142, 142])]
    trend = rss_trend(climb_then_plateau, 141.5, 600.0)
    assert trend["flat"] and trend["middle_mib"] == [141, 142] and trend["growth_mib"] == 0.5
    # the same run still rising by 3 MiB a minute in its last two thirds: not flat
    rising = [(60.0 * m, 110.0 + 25 * min(m, 1) + 3 * max(0, m - 3)) for m in range(10)]
    assert not rss_trend(rising, rising[-1][1], 600.0)["flat"]
    # every sample before the middle third: reported, not judged
    unjudged = rss_trend([(5.0, 100.0)], 101.0, 600.0)
    assert unjudged["growth_mib"] is None and unjudged["judged"] is False


def test_soak_reads_a_sawtooth_by_its_envelopes() -> None:
    """Between heap trims the RSS climbs 25 MiB and drops back: that saw is not growth, but
    troughs (or peaks) that climb from one third to the next are."""
    from sfu.bench.soak import rss_trend

    def saw(t: float, rise_per_s: float = 0.0) -> float:
        return 130.0 + 25.0 * ((t % 300.0) / 300.0) + rise_per_s * t

    samples = [(t, saw(t)) for t in range(0, 1800, 36)]
    flat = rss_trend(samples, saw(1799.0), 1800.0)
    assert flat["flat"] and flat["top_growth_mib"] < 2 and flat["bottom_growth_mib"] < 2
    # one trough against the next peak would have read about 25 MiB here
    leaking = [(t, saw(t, 0.02)) for t in range(0, 1800, 36)]  # 12 MiB per 10 minutes
    trend = rss_trend(leaking, saw(1799.0, 0.02), 1800.0)
    assert not trend["flat"] and trend["bottom_growth_mib"] > 8


def test_fuzz_judges_rss_against_the_warm_baseline_and_fds_against_the_cold_start() -> None:
    from sfu.bench.fuzz.runner import warmup_cases, within
    from sfu.bench.fuzz.system import ProcStats

    mib = 1024
    cold, warm = ProcStats(100 * mib, 14, 5), ProcStats(130 * mib, 20, 6)
    # 150 MiB is 50 over the cold start but 20 over the warm baseline: back
    assert within(warm, cold, ProcStats(150 * mib, 14, 5), 32.0, 8)
    assert not within(warm, cold, ProcStats(163 * mib, 14, 5), 32.0, 8)  # 33 over warm
    # fds count from the cold start: 23 is 9 over it, though only 3 over the warm figure
    assert not within(warm, cold, ProcStats(140 * mib, 23, 5), 32.0, 8)
    # the tolerance is 10 % of a large baseline
    big = ProcStats(1000 * mib, 14, 5)
    assert within(big, cold, ProcStats(1090 * mib, 14, 5), 32.0, 8)
    assert warmup_cases(None, 100_000) == 5000 and warmup_cases(None, 2000) == 200
    assert warmup_cases(0, 2000) == 0 and warmup_cases(9000, 2000) == 2000
