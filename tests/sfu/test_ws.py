"""The WebSocket room protocol (sfu/signalling/ws/) with real aiortc clients on the interface:
validation of bad input, who hears whom in a room of three, rooms that never hear each other,
live mode switching, raw/denoised comparison, leaving and slot reuse.

The engine is the real LocalEngine running `GainModel(gain=0.5)` (conftest `gain_engine`), so
"denoised" audio is exactly half the level of the raw audio and the tests can tell them apart.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from sfu.bench.harness import ToneTrack, wait_for
from sfu.signalling.ws import MAX_MESSAGE_BYTES, WS_HUB
from support.browser.wsclient import WsPeer, tone_power

pytestmark = pytest.mark.timeout(120)

TONES = {"ada": 300.0, "bob": 520.0, "cy": 740.0, "dee": 960.0, "eve": 1180.0}


async def peer(sfu, make_token, room: str, identity: str, **kw) -> WsPeer:
    client = WsPeer(sfu.session, sfu.base_url, make_token(room, identity),
                    ToneTrack(TONES[identity]), **kw)
    joined = await client.join()
    assert joined["type"] == "joined", joined
    await client.publish()
    return client


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def level(x: np.ndarray) -> float:
    """Median RMS of 20 ms blocks: robust to a few concealed or late blocks on a busy CPU."""
    blocks = x[: x.size // 960 * 960].reshape(-1, 960)
    return float(np.median(np.sqrt(np.mean(blocks**2, axis=1)))) if blocks.size else 0.0


async def until_heard(pairs: list[tuple[WsPeer, str]], seconds: float = 0.25) -> None:
    """Wait until each (listener, speaker) pair has `seconds` of audible audio flowing
    (the receive paths are filled), instead of sleeping a fixed time."""
    recent = int(seconds * 48_000)
    await wait_for(lambda: all(rms(p.received(o)[-recent:]) > 0.02
                               and p.received(o).size >= recent for p, o in pairs),
                   "every listener to hear its speakers", timeout=30)


async def after_switch(p: WsPeer, identity: str, seconds: float = 0.5) -> None:
    """Wait until `seconds` more audio of `identity` arrived at `p`: what was in flight before
    a switch has gone by."""
    mark = p.mark()
    await wait_for(lambda: p.received_since(identity, mark).size >= int(seconds * 48_000),
                   f"{seconds} s more of {identity}", timeout=30)


async def listen_for(seconds: float, *peers: WsPeer) -> list[dict[str, int]]:
    marks = [p.mark() for p in peers]
    await asyncio.sleep(seconds)
    return marks


async def test_room_of_three_hears_the_others_never_itself(sfu_factory, gain_engine,
                                                           make_token) -> None:
    sfu = await sfu_factory(gain_engine)
    a = await peer(sfu, make_token, "r1", "ada")
    b = await peer(sfu, make_token, "r1", "bob")
    c = await peer(sfu, make_token, "r1", "cy")
    everyone = {"ada", "bob", "cy"}
    try:
        for p in (a, b, c):
            others = everyone - {p.identity}
            await p.wait_participants(lambda ps, o=others: set(ps) == everyone and all(
                ps[i]["mid"] is not None and ps[i]["publishing"] for i in o))
        await until_heard([(p, o) for p in (a, b, c) for o in everyone - {p.identity}])
        marks = await listen_for(2.0, a, b, c)
        for p, mark in zip((a, b, c), marks, strict=True):
            for other in everyone - {p.identity}:
                got = p.received_since(other, mark)
                assert got.size > 24_000, f"{p.identity} got {got.size} samples of {other}"
                assert rms(got) > 0.02, f"{p.identity} hears silence from {other}"
                # The transceiver of `other` carries other's tone, not anyone else's.
                assert tone_power(got, TONES[other]) > 0.5
                for third in everyone - {other}:
                    assert tone_power(got, TONES[third]) < 0.01, (p.identity, other, third)
            assert p.participants_by_identity()[p.identity]["mid"] is None
            assert not p.errors, p.errors
        # Each client has one sendonly transceiver per other participant, nothing more.
        hub = sfu.app[WS_HUB]
        for p in (a, b, c):
            session = hub.rooms["r1"][p.identity]
            assert sorted(s.target for s in session.slots) == sorted(everyone - {p.identity})

        # Mode switch reaches the server live and is announced to everyone.
        await a.send({"type": "set_mode", "mode": "off"})
        await b.wait_participants(lambda ps: ps["ada"]["mode"] == "off")
        participant = sfu.ctx.registry.get("r1").participants["ada"]
        assert participant.mode == "off"
        assert participant.pipeline.stream.mode == "off"

        # Raw/denoised comparison. Reference: ada, now "off", arrives at full level (same tone
        # amplitude as cy). cy's raw track must match it; cy's denoised track is half of it
        # whenever the engine kept up (late hops pass through at full level by design).
        stream = sfu.ctx.registry.get("r1").participants["cy"].pipeline.stream
        await after_switch(b, "ada")
        before = dict(stream.counters)
        marks = await listen_for(1.5, b)
        denoised = level(b.received_since("cy", marks[0]))
        full = level(b.received_since("ada", marks[0]))
        hops = {k: stream.counters[k] - before[k] for k in before}
        await b.send({"type": "listen", "identity": "cy", "raw": True})
        await b.wait_message(lambda m: m["type"] == "listening" and m["raw"])
        await after_switch(b, "cy")
        marks = await listen_for(1.5, b)
        raw = level(b.received_since("cy", marks[0]))
        assert raw == pytest.approx(full, rel=0.15), (raw, full)
        if hops["denoised"] >= 0.9 * sum(hops.values()):
            assert 1.6 < raw / denoised < 2.5, (raw, denoised, hops)
        await b.send({"type": "listen", "identity": "cy", "raw": False})
        await b.wait_message(lambda m: m["type"] == "listening" and not m["raw"])
        session = hub.rooms["r1"]["bob"]
        slot = next(s for s in session.slots if s.target == "cy")
        assert slot.track.source is slot.subscription.track and slot.raw_track is None
        await after_switch(b, "cy")
        marks = await listen_for(1.0, b)
        assert level(b.received_since("cy", marks[0])) > 0.02

        # cy leaves: the others renegotiate it away; dee joins and reuses cy's transceiver.
        slots_before = len(hub.rooms["r1"]["ada"].slots)
        await c.send({"type": "leave"})
        await c.wait_message(lambda m: m["type"] == "bye")
        for p in (a, b):
            await p.wait_participants(lambda ps: set(ps) == {"ada", "bob"})
        assert "cy" not in sfu.ctx.registry.get("r1").participants
        d = await peer(sfu, make_token, "r1", "dee")
        try:
            await a.wait_participants(lambda ps: "dee" in ps and ps["dee"]["mid"] is not None)
            assert len(hub.rooms["r1"]["ada"].slots) == slots_before
            await until_heard([(a, "dee")])
            marks = await listen_for(1.5, a)
            got = a.received_since("dee", marks[0])
            assert rms(got) > 0.02 and tone_power(got, TONES["dee"]) > 0.5
            assert tone_power(got, TONES["cy"]) < 0.01
        finally:
            await d.close()
        for p in (a, b):
            assert not p.errors, p.errors
    finally:
        for p in (a, b, c):
            await p.close()


async def test_two_rooms_never_hear_each_other(sfu_factory, gain_engine, make_token) -> None:
    sfu = await sfu_factory(gain_engine)
    a = await peer(sfu, make_token, "north", "ada")
    b = await peer(sfu, make_token, "north", "bob")
    d = await peer(sfu, make_token, "south", "dee")
    e = await peer(sfu, make_token, "south", "eve")
    try:
        await a.wait_participants(lambda ps: "bob" in ps and ps["bob"]["mid"] is not None)
        await d.wait_participants(lambda ps: "eve" in ps and ps["eve"]["mid"] is not None)
        await until_heard([(a, "bob"), (b, "ada"), (d, "eve"), (e, "dee")])
        marks = await listen_for(2.0, a, b, d, e)
        pairs = {a: ("bob", {"dee", "eve"}), b: ("ada", {"dee", "eve"}),
                 d: ("eve", {"ada", "bob"}), e: ("dee", {"ada", "bob"})}
        for (p, (mate, strangers)), mark in zip(pairs.items(), marks, strict=True):
            assert set(p.participants_by_identity()) == {p.identity, mate}
            assert set(p.audio) == {p.participants_by_identity()[mate]["mid"]}
            got = p.received_since(mate, mark)
            assert rms(got) > 0.02 and tone_power(got, TONES[mate]) > 0.5
            for stranger in strangers | {p.identity}:
                assert tone_power(got, TONES[stranger]) < 0.01
    finally:
        for p in (a, b, d, e):
            await p.close()


async def test_bad_messages_get_errors_and_disturb_nobody(sfu_factory, gain_engine,
                                                          make_token) -> None:
    sfu = await sfu_factory(gain_engine)
    a = await peer(sfu, make_token, "r", "ada")
    b = await peer(sfu, make_token, "r", "bob")
    try:
        await a.wait_participants(lambda ps: "bob" in ps and ps["bob"]["mid"] is not None)
        # A joined client sending garbage: each gets an error, the session goes on.
        start = len(b.messages)
        bad = ["{not json", json.dumps([1, 2]), json.dumps({"type": 3}),
               json.dumps({"type": "dance"}), json.dumps({"type": "set_mode", "mode": "loud"}),
               json.dumps({"type": "listen", "identity": "ada"}),
               json.dumps({"type": "set_mode", "mode": "on", "pad": "x" * MAX_MESSAGE_BYTES}),
               json.dumps({"type": "answer", "sdp": "v=0"}),
               json.dumps({"type": "offer", "sdp": "v=0"}),
               json.dumps({"type": "listen", "identity": "nobody", "raw": True}),
               json.dumps({"type": "join", "token": "x"})]
        for text in bad:
            await b.ws.send_str(text)
        await b.ws.send_bytes(b"\x00\x01")
        expected = ["bad_json", "bad_message", "bad_message", "unknown_type", "bad_message",
                    "bad_message", "message_too_large", "bad_state", "bad_state",
                    "unknown_participant", "already_joined", "bad_message"]
        for _ in range(50):
            if len(b.errors) >= len(expected):
                break
            await asyncio.sleep(0.1)
        assert [e["code"] for e in b.errors] == expected
        assert all(isinstance(e["message"], str) and e["message"] for e in b.errors)
        # Still in the room, still hearing ada; ada saw no error at all.
        marks = await listen_for(1.5, b)
        assert rms(b.received_since("ada", marks[0])) > 0.02
        assert b.ws.closed is False
        assert not a.errors
        assert not [m for m in b.messages[start:] if m["type"] == "bye"]

        # Not joined yet: everything but join is refused.
        c = WsPeer(sfu.session, sfu.base_url, "")
        await c.connect()
        await c.send({"type": "set_mode", "mode": "on"})
        err = await c.wait_message(lambda m: m["type"] == "error")
        assert err["code"] == "not_joined"
        await c.close()

        # Bad tokens: refused with a clear error, socket closed (4401), room untouched.
        forged = make_token("r", "mallory", secret="another-secret-0123456789abcdef01234")
        for token in ["garbage", forged, make_token("r", "old", now=0.0)]:
            c = WsPeer(sfu.session, sfu.base_url, token)
            joined = await c.join()
            assert joined["type"] == "error" and joined["code"] == "unauthorized", joined
            closed = await c.wait_message(lambda m: m["type"] == "_closed")
            assert closed["code"] == 4401
            await c.close()
        assert set(a.participants_by_identity()) == {"ada", "bob"}

        # A message over the hard limit closes only that socket.
        c = WsPeer(sfu.session, sfu.base_url, make_token("r", "cy"))
        assert (await c.join())["type"] == "joined"
        await c.ws.send_str("x" * (2 * 1024 * 1024))
        closed = await c.wait_message(lambda m: m["type"] == "_closed")
        assert closed["code"] == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await c.close()
        await a.wait_participants(lambda ps: set(ps) == {"ada", "bob"})
        marks = await listen_for(1.0, a)
        assert rms(a.received_since("bob", marks[0])) > 0.02
        assert not a.errors
    finally:
        await a.close()
        await b.close()


async def test_demo_tokens_only_when_enabled(sfu_factory, gain_engine) -> None:
    sfu = await sfu_factory(gain_engine)
    url = sfu.url("/demo/token")
    async with sfu.session.post(url, json={"room": "demo", "name": "ada"}) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "demo_tokens_disabled"
    sfu.app[WS_HUB].demo_tokens = True
    async with sfu.session.post(url, json={"room": "demo", "name": "no spaces"}) as response:
        assert response.status == 400
    async with sfu.session.post(url, json={"room": "demo", "name": "ada"}) as response:
        assert response.status == 200
        body = await response.json()
    assert body["room"] == "demo" and body["identity"].startswith("ada-")
    client = WsPeer(sfu.session, sfu.base_url, body["token"])
    try:
        joined = await client.join()
        assert joined["type"] == "joined" and joined["identity"] == body["identity"]
    finally:
        await client.close()
