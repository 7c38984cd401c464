"""Tokens (issue, verify, expiry, tampering, grants), the `token` command, and Settings."""

from __future__ import annotations

import argparse
import time

import jwt
import pytest

from sfu import cli
from sfu.auth import Claims, authorize, issue_token, verify_token
from sfu.errors import Forbidden, Unauthorized
from sfu.settings import Settings, SettingsError, add_arguments, from_sources

SECRET = "unit-secret-" + "0123456789abcdef" * 4


def test_token_round_trip_has_the_contract_claims() -> None:
    token = issue_token(SECRET, "room-1", "alice", ttl=120, now=1_000)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"room": "room-1", "sub": "alice", "grants": ["publish", "subscribe"],
                       "iat": 1_000, "exp": 1_120}
    claims = verify_token(SECRET, issue_token(SECRET, "room-1", "alice", ttl=60))
    assert claims.room == "room-1" and claims.identity == "alice"
    assert claims.grants == {"publish", "subscribe"}


def test_expired_forged_and_malformed_tokens_are_unauthorized() -> None:
    expired = issue_token(SECRET, "r", "a", ttl=10, now=time.time() - 100)
    with pytest.raises(Unauthorized) as err:
        verify_token(SECRET, expired)
    assert err.value.code == "token_expired"
    good = issue_token(SECRET, "r", "a")
    for bad in (issue_token(SECRET + "x", "r", "a"), good[:-2] + "xx", "abc", "",
                jwt.encode({"room": "r", "sub": "a", "exp": time.time() + 60}, SECRET,
                           algorithm="HS512"),
                jwt.encode({"room": "r", "exp": time.time() + 60}, SECRET, algorithm="HS256"),
                jwt.encode({"room": "r/../x", "sub": "a", "exp": time.time() + 60}, SECRET,
                           algorithm="HS256"),
                jwt.encode({"room": "r", "sub": "a", "grants": "publish",
                            "exp": time.time() + 60}, SECRET, algorithm="HS256")):
        with pytest.raises(Unauthorized) as err:
            verify_token(SECRET, bad)
        assert err.value.code == "invalid_token", bad


def test_unknown_grants_are_dropped_and_authorize_checks_room_and_grant() -> None:
    token = jwt.encode({"room": "r", "sub": "a", "grants": ["subscribe", "admin"],
                        "exp": time.time() + 60}, SECRET, algorithm="HS256")
    claims = verify_token(SECRET, token)
    assert claims.grants == {"subscribe"}
    authorize(claims, "r", "subscribe")
    with pytest.raises(Forbidden, match="publish"):
        authorize(claims, "r", "publish")
    with pytest.raises(Forbidden) as err:
        authorize(Claims("r", "a", frozenset({"publish"}), 0), "other", "publish")
    assert err.value.code == "wrong_room"


@pytest.mark.parametrize("room,identity,grants,ttl", [
    ("bad room", "a", ("publish",), 60), ("r", "", ("publish",), 60),
    ("r", "x" * 65, ("publish",), 60), ("r", "a", ("admin",), 60), ("r", "a", ("publish",), 0)])
def test_issue_rejects_bad_input(room: str, identity: str, grants: tuple[str, ...],
                                 ttl: int) -> None:
    with pytest.raises(ValueError):
        issue_token(SECRET, room, identity, ttl, grants)


def test_token_command(capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["token", "--room", "r1", "--identity", "bob", "--ttl", "30",
                     "--secret", SECRET, "--grant", "subscribe"]) == 0
    claims = verify_token(SECRET, capsys.readouterr().out.strip())
    assert (claims.room, claims.identity, claims.grants) == ("r1", "bob", {"subscribe"})
    assert claims.expires_at - time.time() <= 31
    monkeypatch.setenv("DENOISE_SFU_SECRET", SECRET)
    assert cli.main(["token", "--room", "r1", "--identity", "bob"]) == 0
    assert verify_token(SECRET, capsys.readouterr().out.strip()).grants == {"publish",
                                                                            "subscribe"}
    monkeypatch.delenv("DENOISE_SFU_SECRET")
    assert cli.main(["token", "--room", "r1", "--identity", "bob"]) == 2
    assert "DENOISE_SFU_SECRET" in capsys.readouterr().err
    assert cli.main(["token", "--room", "r 1", "--identity", "bob", "--secret", SECRET]) == 2


def test_settings_flags_override_environment_over_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"DENOISE_SFU_PORT": "9000", "DENOISE_SFU_HOST": "10.0.0.1",
           "DENOISE_SFU_SECRET": "from-env", "DENOISE_SFU_ICE_SERVER": "stun:a:3478, stun:b"}
    settings = from_sources(parser.parse_args(["--port", "9100", "--engine", "local"]), env)
    assert (settings.port, settings.host, settings.secret) == (9100, "10.0.0.1", "from-env")
    assert settings.ice_servers == ("stun:a:3478", "stun:b")
    assert settings.base_url == "http://10.0.0.1:9100"
    assert from_sources(None, {}) == Settings()
    with pytest.raises(SettingsError, match="DENOISE_SFU_PORT"):
        from_sources(None, {"DENOISE_SFU_PORT": "eighty"})
    with pytest.raises(SettingsError):
        Settings(engine="gpu")
    generated = Settings().with_secret()
    assert generated.secret_generated and len(generated.secret) >= 32
    assert Settings(public_url="https://sfu.example/").base_url == "https://sfu.example"


def test_serve_and_worker_check_their_redis_settings(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    assert cli.main(["serve", "--redis", "redis://localhost:6379"]) == 2
    assert "--redis needs --public-url" in capsys.readouterr().err
    assert cli.main(["serve", "--redis", "localhost:6379", "--public-url", "http://x"]) == 2
    assert "redis:// URL" in capsys.readouterr().err
    assert cli.main(["worker", "--redis", "localhost:6379"]) == 2
    assert "redis:// URL" in capsys.readouterr().err
    assert cli.main(["worker", "--advertise", "no-port-here:x"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_serve_checks_its_worker_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--worker", "127.0.0.1:7100"]) == 2
    assert "only used with --engine workers" in capsys.readouterr().err
    assert cli.main(["serve", "--engine", "workers", "--worker", "nohost:port"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    env = {"DENOISE_SFU_ENGINE": "workers", "DENOISE_SFU_WORKER": "a:7100, b:7101"}
    assert from_sources(None, env).workers == ("a:7100", "b:7101")


def test_demo_tokens_default_to_on_only_for_a_generated_secret() -> None:
    assert Settings().with_secret().demo_tokens is True
    assert Settings(secret="configured").with_secret().demo_tokens is None
    assert Settings(demo_tokens=False).with_secret().demo_tokens is False
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_sources(parser.parse_args(["--demo-tokens", "no"]), {}).demo_tokens is False
    assert from_sources(None, {"DENOISE_SFU_DEMO_TOKENS": "yes"}).demo_tokens is True
    with pytest.raises(SettingsError):
        from_sources(None, {"DENOISE_SFU_DEMO_TOKENS": "maybe"})


def test_model_lookahead_is_checked() -> None:
    assert from_sources(None, {"DENOISE_SFU_MODEL_LOOKAHEAD": "1"}).model_lookahead == 1
    with pytest.raises(SettingsError, match="model_lookahead"):
        Settings(model_lookahead=3)


def test_max_streams_is_checked() -> None:
    assert from_sources(None, {"DENOISE_SFU_MAX_STREAMS": "3"}).max_streams == 3
    with pytest.raises(SettingsError, match="max_streams"):
        Settings(max_streams=0)
