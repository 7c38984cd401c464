"""WHIP publish of a real Opus file, WHEP subscribe, replace, DELETE: real aiortc peers over the
machine's interface, a real LocalEngine (GainModel: known output), real Opus both ways."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from denoiser.engine import Engine
from support.peers import Client, wait_for
from support.sfu import SfuFactory

pytestmark = pytest.mark.timeout(120)


async def test_publish_subscribe_replace_and_leave(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    # Generous deadlines: what is tested is the path, not this shared box's speed.
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    registry, metrics = sfu.ctx.registry, sfu.ctx.metrics
    alice = Client(sfu, make_token("room1", "alice"))
    bob = Client(sfu, make_token("room1", "bob"))
    try:
        assert await alice.publish("room1", speech_opus, mode="on") == 201
        assert alice.location is not None and alice.location.startswith("/whip/room1/")
        assert registry.get("room1").participants["alice"].mode == "on"

        # bob hears alice's processed voice
        assert await bob.subscribe("room1", "alice") == 201
        assert bob.location is not None and bob.location.startswith("/whep/room1/alice/")
        await wait_for(lambda: len(bob.received) >= 50)  # one second of 20 ms frames
        assert bob.rms_since(10) > 0.003, "subscriber received silence"
        stream = registry.get("room1").participants["alice"].pipeline.stream
        assert stream.counters["denoised"] > 50, (stream.counters, stream.deadline,
                                                  gain_engine.stats.snapshot())
        assert stream.passed_through == 0, (stream.counters, stream.deadline,
                                            gain_engine.stats.snapshot())
        assert gain_engine.live_streams == 1

        # nobody hears themselves; unknown targets are 404
        assert await Client(sfu, alice.token).subscribe("room1", "alice") == 403
        carol = Client(sfu, make_token("room1", "carol"))
        assert await carol.subscribe("room1", "nobody") == 404
        await carol.close()
        # a session can only be ended by its owner
        assert await bob.delete(token=make_token("room1", "mallory")) == 403

        # alice publishes again (a new tab): the old session is replaced, bob keeps listening
        old_location = alice.location
        alice2 = Client(sfu, alice.token)
        assert await alice2.publish("room1", speech_opus, mode="on") == 201
        await wait_for(lambda: registry.find(old_location.rsplit("/", 1)[1]) is None)
        assert len(registry.get("room1").participants) == 1
        await wait_for(lambda: alice.pc.connectionState in ("closed", "failed"))
        await wait_for(lambda: gain_engine.live_streams == 1)
        before = len(bob.received)
        await wait_for(lambda: len(bob.received) >= before + 75)  # past the file's 0.6 s pause
        assert bob.rms_since(before + 5) > 0.003, "subscriber lost audio after republish"
        # the replaced session is gone: its owner's DELETE says so once (200 "ended"), then 404
        assert await alice.delete() == 200
        assert await alice.delete() == 404

        # metrics saw it all
        async with sfu.session.get(sfu.url("/metrics")) as resp:
            text = await resp.text()
        assert "denoise_sfu_participants 1.0" in text
        assert "denoise_sfu_subscribers 1.0" in text
        assert metrics.frames_denoised._value.get() > 50

        # alice leaves: her subscribers are closed, the room disappears, the slot is free
        assert await alice2.delete() == 200
        assert registry.get("room1") is None and registry.room_count == 0
        assert gain_engine.live_streams == 0
        await wait_for(lambda: bob.pc.connectionState in ("closed", "failed"), timeout=40)
        assert await bob.delete() == 200  # closed with its publisher: "ended", then forgotten
        assert await bob.delete() == 404
        await alice2.close()
    finally:
        for client in (alice, bob):
            await client.close()


async def test_subscriber_delete_frees_only_itself(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    sfu = await sfu_factory(gain_engine)
    registry = sfu.ctx.registry
    alice = Client(sfu, make_token("r", "alice"))
    bob = Client(sfu, make_token("r", "bob"))
    other = Client(sfu, make_token("elsewhere", "dave"))
    try:
        assert await alice.publish("r", speech_opus, mode="off") == 201
        assert await other.publish("elsewhere", speech_opus) == 201
        assert await bob.subscribe("r", "alice") == 201
        await wait_for(lambda: len(bob.received) >= 10)
        pipeline = registry.get("r").participants["alice"].pipeline
        assert pipeline.subscriber_count == 1
        assert await bob.delete() == 200
        assert pipeline.subscriber_count == 0
        assert registry.subscription_count == 0
        assert list(registry.get("r").participants) == ["alice"]
        assert list(registry.get("elsewhere").participants) == ["dave"]
        await wait_for(lambda: pipeline.stream.counters["mode_off"] > 10)
        assert pipeline.stream.counters["denoised"] == 0
        # the client going away without DELETE is noticed too
        await alice.close()
        await wait_for(lambda: registry.get("r") is None, timeout=40)
        assert gain_engine.live_streams == 1
    finally:
        for client in (alice, bob, other):
            await client.close()
