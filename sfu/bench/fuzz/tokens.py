"""Target `tokens`: malformed bearer tokens (bad base64, `alg: none`, other algorithms, wrong
signatures, claims of the wrong type or size signed with the real secret, expiry at the edges)
on every authenticated entry: WHIP, WHEP, DELETE of a session, the WebSocket join. Any 5xx
(or `internal_error` on the socket) is a finding."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from typing import Any

import aiohttp

from sfu.bench.fuzz.cases import HTTP_TIMEOUT, Case, FuzzEnv, Outcome, judge_status, pick
from sfu.bench.fuzz.json_inputs import _replies, random_value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret: str, header: dict[str, Any] | str, payload: Any, alg: str = "sha256") -> str:
    head = b64(json.dumps(header).encode()) if isinstance(header, dict) else header
    body = b64(json.dumps(payload).encode() if not isinstance(payload, bytes) else payload)
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), getattr(hashlib, alg)).digest()
    return f"{head}.{body}.{b64(mac)}"


def bad_token(rng: random.Random, secret: str, room: str) -> tuple[str, str, bool]:
    """(what, token, whether the server must refuse it: False where a mutation may leave a
    valid token, e.g. claims signed with the real secret, or a base64 change in unused bits)."""
    now = int(time.time())
    good = {"room": room, "sub": "t1", "grants": ["publish", "subscribe"], "iat": now,
            "exp": now + 600}
    op = rng.randrange(12)
    if op == 0:
        none = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return "alg none", f"{none}.{b64(json.dumps(good).encode())}.", True
    if op == 1:
        return "HS512 with the secret", sign(secret, {"alg": "HS512", "typ": "JWT"}, good,
                                             "sha512"), True
    if op == 2:
        return "wrong secret", sign("not-the-secret", {"alg": "HS256", "typ": "JWT"}, good), True
    if op == 3:
        claims = dict(good)
        key = pick(rng, ["room", "sub", "grants", "exp", "iat", "nbf", "aud", "iss"])
        claims[key] = random_value(rng)
        return f"signed, {key}={str(claims[key])[:40]!r}", sign(
            secret, {"alg": "HS256", "typ": "JWT"}, claims), False
    if op == 4:
        payload = pick(rng, ([], "x", 1, None, [good], b"\xff\xfe", b"{" * 1000))
        return f"signed non-object payload {str(payload)[:30]}", sign(
            secret, {"alg": "HS256"}, payload), True
    if op == 5:
        header = pick(rng, ({"alg": "HS256", "kid": "../" * 50}, {"alg": ["HS256"]},
                            {"alg": "HS256", "crit": ["x"]}, {"alg": "RS256"}, {},
                            {"alg": "HS256", "typ": "x" * 3000}))
        return f"header {str(header)[:40]}", sign(secret, header, good), False
    if op == 6:
        parts = [b64(rng.randbytes(rng.randint(0, 40))) for _ in range(rng.choice((1, 2, 3, 4, 9)))]
        return "random base64 parts", ".".join(parts), True
    if op == 7:
        size = rng.choice((4000, 4097, 10_000, 60_000))
        return f"{size} chars", "e" * size, True
    if op == 8:
        claims = dict(good, exp=pick(rng, (0, now - 10, now + 10 ** 12, 2 ** 63, -(2 ** 63),
                                           1e300, "tomorrow")))
        return f"exp {claims['exp']!r}", sign(secret, {"alg": "HS256"}, claims), False
    if op == 9:
        sub, name = pick(rng, ("", "x" * 65, "a/b", "\u0000", "é", "..")), pick(
            rng, (room, "", "r" * 100, "a b"))
        claims = dict(good, sub=sub, room=name)
        return f"names sub={sub[:20]!r} room={name[:20]!r}", sign(
            secret, {"alg": "HS256"}, claims), True
    if op == 10:
        token = sign(secret, {"alg": "HS256"}, good)
        pos = rng.randrange(len(token))
        return ("one character changed",
                token[:pos] + pick(rng, tuple("A.-_=+/ %\u00e9")) + token[pos + 1:], False)
    return "bad padding / characters", sign(secret, {"alg": "HS256"}, good) + pick(
        rng, ("=", "==", ".", "..", " x", "\t", "\udcff")), False


class TokenTarget:
    name = "tokens"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        room = f"fzt{case.index % 41}"
        what, token, must_refuse = bad_token(rng, env.system.secret, room)
        token = token.encode("utf-8", "surrogateescape").decode("latin-1")
        outcome = Outcome()
        entry = pick(rng, ("whip", "whep", "delete", "ws", "whip"))
        case.payload = token
        if entry == "ws":
            case.what = f"ws join: {what}"
            async with env.session.ws_connect(env.url("/ws"), timeout=aiohttp.ClientWSTimeout(
                    ws_receive=10.0)) as ws:
                await ws.send_str(json.dumps({"type": "join", "token": token}))
                await _replies(ws, outcome, case.what, 0.5)
            return outcome
        paths = {"whip": ("POST", f"/whip/{room}"),
                 "whep": ("POST", f"/whep/{env.room}/{env.publisher}"),
                 "delete": ("DELETE", pick(rng, (f"/whip/{room}/abc", f"/whep/{room}/x/abc",
                                                 f"/whep/{env.room}/{env.publisher}/zz")))}
        method, path = paths[entry]
        case.what = f"{method} {path}: {what}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        async with env.session.request(method, env.url(path), headers=headers,
                                       data=env.whip_offer if method == "POST" else None,
                                       timeout=HTTP_TIMEOUT) as resp:
            judge_status(outcome, resp.status, await resp.text(errors="replace"), case.what)
            if resp.status == 201 and "Location" in resp.headers and must_refuse:
                outcome.expectation = f"{case.what}: accepted (201)"
            if resp.status == 201:
                outcome.created += 1  # (left to the connect deadline: its token is odd)
        return outcome
