"""The fuzzer's own valid tokens outlive any run: a 100,000-case run (70 minutes) once saw
its valid split offers refused `token_expired` after the first hour."""

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
