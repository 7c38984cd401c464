"""Target `json`: the WebSocket room protocol (`GET /ws`) and the JSON endpoints (`POST
/demo/token`, `POST /admin/drain`) with wrong types, deep nesting, huge strings, unknown
fields, mutated offers, and messages out of order. A 5xx, or an `internal_error` message on
the socket, is a finding. The admin token itself is never sent (the server must not drain)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import aiohttp

from sfu.bench.fuzz.cases import HTTP_TIMEOUT, Case, FuzzEnv, Outcome, judge_status, pick
from sfu.bench.fuzz.sdp import mutate_sdp

TYPES = ("join", "offer", "answer", "set_mode", "listen", "leave", "JOIN", "", "bye", "error")
REPLY_WAIT_S = 0.15


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (bounded depth), with the awkward ones weighted in."""
    kinds = 9 if depth < 4 else 6
    kind = rng.randrange(kinds)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.choice((0, -1, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 30, -(10 ** 30)))
    if kind == 3:
        return rng.choice((0.5, 1e308, -1e-308, 3.14))
    if kind == 4:
        return rng.choice(("", "on", "auto", "x" * rng.choice((10, 1000, 60_000)),
                           "\u0000", "\ud800", "é" * 100, "../../etc", "speaker"))
    if kind == 5:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randint(0, 40)))
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {pick(rng, ("type", "token", "sdp", "mode", "identity", "raw", "x", "")):
            random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def deep(rng: random.Random) -> str:
    """A message nested far deeper than any parser's recursion limit, under 64 KiB."""
    n = rng.choice((1500, 5000, 20_000, 30_000))
    open_, close = pick(rng, (("[", "]"), ('{"a":', "}")))
    inner = open_ * n + "1" + close * n
    return pick(rng, (inner, '{"type":"offer","sdp":' + inner + "}",
                      '{"type":"join","token":"x","mode":' + inner + "}",
                      '{"type":' + inner + "}"))


def ws_message(rng: random.Random, env: FuzzEnv, token: str) -> tuple[str, str]:
    """(what, text) of one mutated message."""
    op = rng.randrange(9)
    if op == 0:
        return "deep nesting", deep(rng)
    if op == 1:
        size = rng.choice((65_000, 70_000, 200_000, 1_100_000))
        return f"huge string {size}", json.dumps({"type": "offer", "sdp": "v" * size})
    if op == 2:
        msg = {"type": pick(rng, TYPES)}
        for key in rng.sample(["token", "sdp", "mode", "identity", "raw"], rng.randint(0, 3)):
            msg[key] = random_value(rng)
        return "wrong types", json.dumps(msg)
    if op == 3:
        return "random value", json.dumps(random_value(rng))
    if op == 4:
        what, body = mutate_sdp(rng, pick(rng, (env.whip_offer, env.whep_offer)))
        return f"offer: {what}", json.dumps({"type": pick(rng, ("offer", "answer")),
                                             "sdp": body.decode("utf-8", "replace")})
    if op == 5:
        return "valid offer", json.dumps({"type": "offer", "sdp": env.whip_offer})
    if op == 6:
        text = json.dumps({"type": "join", "token": token, "mode": "on"})
        cut = rng.randrange(len(text))
        return "truncated json", text[:cut]
    if op == 7:
        return "listen/set_mode", json.dumps(pick(rng, (
            {"type": "listen", "identity": env.publisher, "raw": True},
            {"type": "listen", "identity": "x" * 300, "raw": False},
            {"type": "set_mode", "mode": "on"}, {"type": "set_mode", "mode": "loud"},
            {"type": "leave"}, {"type": "answer", "sdp": env.whep_offer})))
    return "bad utf-8 / NUL", '{"type":"set_mode","mode":"\\u0000\\udfff"}'


async def _replies(ws: aiohttp.ClientWebSocketResponse, outcome: Outcome, what: str,
                   wait: float = REPLY_WAIT_S) -> None:
    """Read what the server says for `wait` seconds; `internal_error` is a finding."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while not ws.closed:
        left = end - loop.time()
        if left <= 0:
            return
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return
        if msg.type is aiohttp.WSMsgType.TEXT:
            with contextlib.suppress(ValueError):
                data = json.loads(msg.data)
                if isinstance(data, dict) and data.get("code") == "internal_error":
                    outcome.server_error = f"ws {what}: {msg.data[:300]}"
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                          aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            if ws.close_code is not None:
                outcome.statuses.append(int(ws.close_code))
            if ws.close_code == 1011:  # "internal error" close
                outcome.server_error = f"ws {what}: closed 1011"
            return


async def _ws_case(case: Case, env: FuzzEnv, outcome: Outcome) -> None:
    rng = case.rng
    room = f"fzw{case.index % 31}"
    grants = pick(rng, (("publish", "subscribe"), ("subscribe",), ("publish",)))
    token = env.token(room, f"w{case.index % 64}", *grants)
    sent: list[str] = []
    async with env.session.ws_connect(env.url("/ws"), timeout=aiohttp.ClientWSTimeout(
            ws_receive=10.0), max_msg_size=0) as ws:
        if rng.random() < 0.3:
            what, text = ws_message(rng, env, token)
            what = f"as first message: {what}"
        else:
            what, text = "join", json.dumps({"type": "join", "token": token,
                                             "mode": pick(rng, ("auto", "on", "off"))})
        sent.append(text)
        await ws.send_str(text)
        await _replies(ws, outcome, what)
        for _ in range(rng.randint(1, 3)):
            if ws.closed or outcome.server_error:
                break
            what, text = ws_message(rng, env, token)
            sent.append(text)
            await ws.send_str(text)
            await _replies(ws, outcome, what)
    case.what = f"ws {room} grants={','.join(grants)}: " + what
    case.payload = "\n".join(sent)


async def _http_case(case: Case, env: FuzzEnv, outcome: Outcome) -> None:
    rng = case.rng
    path = pick(rng, ("/demo/token", "/admin/drain"))
    op = rng.randrange(4)
    if op == 0:
        text = deep(rng)
    elif op == 1:
        text = json.dumps(random_value(rng))
    elif op == 2:
        text = json.dumps({"room": random_value(rng), "name": random_value(rng)})
    else:
        text = json.dumps({"room": "fzd", "name": "n" * rng.choice((1, 64, 70, 10_000))})
    headers = {"Content-Type": pick(rng, ("application/json", "text/plain", "application/x"))}
    if path == "/admin/drain":
        real = env.system.admin_token
        fake = pick(rng, ("", real[:-1], real + "x", real.upper() + "!", "Bearer", "\u00e9" * 8,
                          "x" * 5000))
        assert fake != real  # never the real one: that would drain the server
        headers["Authorization"] = f"Bearer {fake}".encode("utf-8", "replace").decode("latin-1")
    case.what, case.payload = f"POST {path} ({headers.get('Content-Type')})", text
    async with env.session.post(env.url(path), data=text.encode("utf-8", "surrogatepass"),
                                headers=headers, timeout=HTTP_TIMEOUT) as resp:
        judge_status(outcome, resp.status, await resp.text(errors="replace"), f"POST {path}")


class JsonTarget:
    name = "json"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        outcome = Outcome()
        if case.rng.random() < 0.75:
            await _ws_case(case, env, outcome)
        else:
            await _http_case(case, env, outcome)
        return outcome
