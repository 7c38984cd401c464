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
    assert trend["flat"] and trend["warm_mib"] == 141 and trend["growth_mib"] == 1.0
    # the same run still rising by 2 MiB a minute in its last two thirds: not flat
    rising = [(60.0 * m, 110.0 + 25 * min(m, 1) + 2 * max(0, m - 3)) for m in range(10)]
    assert not rss_trend(rising, rising[-1][1], 600.0)["flat"]
    # every sample before the warm point: reported, not judged
    unjudged = rss_trend([(5.0, 100.0)], 101.0, 600.0)
    assert unjudged["growth_mib"] is None and unjudged["judged"] is False


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
