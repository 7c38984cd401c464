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
