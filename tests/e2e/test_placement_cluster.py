"""A cluster on this machine, all real processes: `redis-server`, two SFU nodes
(`serve --redis --engine workers`) and two workers (`worker --redis`, the shipped model),
with real aiortc peers. Joins on the wrong node are redirected (WHIP, WHEP, the room socket);
a killed worker's call goes on and is denoised again on the other worker; a Redis outage
leaves calls running and answers joins 503 until it returns; a paused node loses its room for
good; a draining node keeps its call, sends new rooms elsewhere and exits when empty."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile

from sfu.auth import issue_token
from support.browser.chromium import chromium_path, launch_args
from support.placement import (
    ADMIN_TOKEN,
    Arrivals,
    Call,
    LoopTrack,
    Node,
    Proc,
    RedisServer,
    ascrape,
    hang_up,
    listen,
    noisy_tones,
    publish,
    spawn_node,
    spawn_worker,
    value,
    wait_listening,
    wait_ready,
)
from support.sample_audio import speech_48k

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
SECRET = "placement-test-secret-0123456789abcdef"


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[Node]
    workers: list[Proc]
    tmp: Path
    host: str

    def node(self, base: str) -> Node:
        return next(n for n in self.nodes if n.url == base)

    def other(self, base: str) -> Node:
        return next(n for n in self.nodes if n.url != base and n.proc.poll() is None)


@pytest.fixture(scope="module")
def cluster(host_ip: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    redis = RedisServer().start()
    workers = [spawn_worker(tmp, f"w{i}", redis.url, SECRET, ["--max-streams", "4"])
               for i in (1, 2)]
    nodes = [spawn_node(tmp, name, host_ip, redis.url, SECRET) for name in ("a", "b")]
    try:
        for worker in workers:
            wait_listening(worker)
        for node in nodes:
            wait_ready(node)
        yield Cluster(redis, nodes, workers, tmp, host_ip)
    finally:
        for proc in [*nodes, *workers]:
            proc.stop()
        redis.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def denoised(session: aiohttp.ClientSession, base: str) -> float:
    return value(await ascrape(session, base), "denoise_sfu_frames_denoised_total")


async def test_joins_on_the_wrong_node_are_redirected_to_the_owner(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    room = "redirects"
    first = cluster.nodes[0].url
    speaker = await publish(session, first, room, "speaker", SECRET, LoopTrack(noisy_tones()))
    owner, other = speaker.base, cluster.other(speaker.base).url
    arrivals = Arrivals()
    calls: list[Call] = [speaker]
    try:
        token = issue_token(SECRET, room, "late", 600)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        # WHIP and WHEP on the node that does not own the room: 307 to the same path there.
        async with session.post(f"{other}/whip/{room}?mode=on", data="v=0\r\n", headers=headers,
                                allow_redirects=False) as resp:
            assert resp.status == 307, await resp.text()
            assert resp.headers["Location"] == f"{owner}/whip/{room}?mode=on"
        async with session.post(f"{other}/whep/{room}/speaker", data="v=0\r\n",
                                headers=headers, allow_redirects=False) as resp:
            assert resp.status == 307
            assert resp.headers["Location"] == f"{owner}/whep/{room}/speaker"
        # A client that follows the redirect ends up in the call, on the owner.
        listener = await listen(session, other, room, "listener", "speaker", SECRET, arrivals)
        calls.append(listener)
        assert listener.base == owner and listener.redirects == 1
        await asyncio.wait_for(arrivals.arrived.wait(), 15)
        # The room socket: 307 before the upgrade for a client naming its room, and a
        # `redirect` message at join for a browser (its WebSocket cannot follow a 307).
        async with session.get(f"{other}/ws?room={room}", allow_redirects=False) as resp:
            assert resp.status == 307
            assert resp.headers["Location"] == f"{owner}/ws?room={room}"
        async with session.ws_connect(f"{other}/ws") as ws:
            await ws.send_json({"type": "join", "token": token})
            message = await ws.receive_json(timeout=5)
            assert message == {"type": "redirect", "url": owner.replace("http", "ws") + "/ws",
                               "location": owner, "room": room}
            while (await ws.receive(timeout=5)).type not in (aiohttp.WSMsgType.CLOSE,
                                                             aiohttp.WSMsgType.CLOSED):
                pass
            assert ws.close_code == 4307
        async with session.ws_connect(message["url"]) as ws:
            await ws.send_json({"type": "join", "token": token})
            joined = await ws.receive_json(timeout=5)
            assert joined["type"] == "joined" and joined["room"] == room
        samples = await ascrape(session, other)
        assert value(samples, "denoise_sfu_placement_decisions_total",
                     decision="redirect") >= 4
        assert await denoised(session, owner) > 0
    finally:
        await arrivals.stop()
        for call in calls:
            await hang_up(session, call)


@pytest.mark.browser
async def test_the_demo_page_follows_the_redirect_to_the_owner_and_the_call_works(
        cluster: Cluster, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Chromium opens the demo page on the node that does not own the room: the page's join
    is answered `redirect`, it joins again on the owner, publishes its microphone (speech
    from tests/data) and hears the speaker already there."""
    playwright_api = pytest.importorskip("playwright.async_api")
    room = "browser-redirect"
    speaker = await publish(session, cluster.nodes[0].url, room, "speaker", SECRET,
                            LoopTrack(noisy_tones(seed=4)))
    owner, other = speaker.base, cluster.other(speaker.base).url
    microphone = tmp_path / "microphone.wav"
    soundfile.write(microphone, np.tile(speech_48k(), 3), 48_000, subtype="PCM_16")
    token = issue_token(SECRET, room, "page", 600)
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=chromium_path(), headless=True,
                args=[*launch_args(microphone, other),
                      f"--unsafely-treat-insecure-origin-as-secure={other},{owner}"])
            try:
                page = await browser.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                await page.goto(f"{other}/?room={room}&name=page#token={token}")
                await page.get_by_role("button", name="Join").click()
                await page.wait_for_selector("#call-panel:not([hidden])", timeout=20_000)
                where = await page.evaluate(
                    "() => [window.denoiseDemo.node, window.denoiseDemo.redirects]")
                assert where == [owner.replace("http", "ws", 1), 1], (where, console)
                # The page hears the speaker (its meter moves) ...
                await page.locator("li.participant[data-identity=speaker]").wait_for(
                    timeout=15_000)
                await page.wait_for_function(
                    "() => document.querySelector('li[data-identity=speaker] meter').value"
                    " > 0.1", timeout=15_000)

                # ... and publishes on the owner, where its audio is denoised.
                async def page_published() -> bool:
                    samples = await ascrape(session, owner)
                    return value(samples, "denoise_sfu_participants") >= 2

                await wait_for(page_published, "the page publishing on the owner", 15)
                before = await denoised(session, owner)
                await asyncio.sleep(1.0)
                assert await denoised(session, owner) > before
                assert value(await ascrape(session, other), "denoise_sfu_participants") == 0
                assert not [c for c in console if c.startswith("error")], console
            finally:
                await browser.close()
    finally:
        await hang_up(session, speaker)


def worker_of_stream(samples: dict, cluster: Cluster) -> Proc:  # type: ignore[type-arg]
    for worker in cluster.workers:
        if worker.proc.poll() is None and value(samples, "denoise_sfu_worker_streams",
                                                worker=worker.info["address"]) > 0:
            return worker
    raise AssertionError("no worker holds the stream")


async def test_killing_the_worker_of_a_live_call_keeps_it_heard_and_denoised(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    room = "failover"
    arrivals = Arrivals()
    speaker = await publish(session, cluster.nodes[0].url, room, "speaker", SECRET,
                            LoopTrack(noisy_tones(seed=1)))
    node = speaker.base
    calls = [speaker]
    late: Proc | None = None
    try:
        calls.append(await listen(session, node, room, "listener", "speaker", SECRET,
                                  arrivals))
        await asyncio.wait_for(arrivals.arrived.wait(), 15)
        await asyncio.sleep(1.0)
        before = await ascrape(session, node)
        await asyncio.sleep(1.0)
        victim = worker_of_stream(before, cluster)
        survivor = next(w for w in cluster.workers if w is not victim)
        hops_key = ("denoise_sfu_worker_hops_sent_total", survivor.info["address"])
        at_kill = await ascrape(session, node)
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        resumed = None
        while time.monotonic() - killed < 3.0:
            now = await ascrape(session, node)
            if resumed is None and value(now, hops_key[0], worker=hops_key[1]) > value(
                    at_kill, hops_key[0], worker=hops_key[1]) and value(
                    now, "denoise_sfu_frames_denoised_total") > value(
                    at_kill, "denoise_sfu_frames_denoised_total"):
                resumed = time.monotonic() - killed
            await asyncio.sleep(0.1)
        after = await ascrape(session, node)
        gap = arrivals.max_gap(killed - 0.2, killed + 3.0)
        baseline_gap = arrivals.max_gap(killed - 2.0, killed - 0.2)
        baseline = {reason: value(at_kill, "denoise_sfu_frames_passed_through_total",
                                  reason=reason) - value(before,
                                                         "denoise_sfu_frames_passed_through_total",
                                                         reason=reason)
                    for reason in ("engine_error", "late", "engine_full")}
        passed = {reason: value(after, "denoise_sfu_frames_passed_through_total",
                                reason=reason) - value(at_kill,
                                                       "denoise_sfu_frames_passed_through_total",
                                                       reason=reason)
                  for reason in ("engine_error", "late", "engine_full")}
        print(f"before the kill (1 s): listener gap {baseline_gap * 1e3:.0f} ms, passed "
              f"through {baseline}")
        print(f"failover: listener gap {gap * 1e3:.0f} ms, denoising resumed after "
              f"{resumed if resumed is None else round(resumed * 1e3)} ms, passed through "
              f"{passed}, moved "
              f"{value(after, 'denoise_sfu_placement_streams_total', decision='moved')}")
        assert gap <= 0.100, f"the listener heard a gap of {gap * 1e3:.0f} ms"
        assert resumed is not None and resumed <= 2.0
        assert value(after, "denoise_sfu_placement_streams_total", decision="moved") >= 1
        # The frame in flight and the one that warmed the other worker went out raw, counted
        # (`late` hops come from this busy machine at the same rate as before the kill).
        assert 1 <= passed["engine_error"] <= 6
        # A worker that joins later takes the next new stream (it has the most free slots).
        late = wait_listening(spawn_worker(cluster.tmp, "w3", cluster.redis.url, SECRET,
                                           ["--max-streams", "4"]))
        cluster.workers.append(late)

        async def late_connected() -> bool:
            return value(await ascrape(session, node), "denoise_sfu_worker_connected",
                         worker=late.info["address"]) == 1

        await wait_for(late_connected, "the node to connect to the late worker")
        second = await publish(session, node, room, "second", SECRET,
                               LoopTrack(noisy_tones(seed=2)))
        calls.append(second)
        await asyncio.sleep(0.5)
        samples = await ascrape(session, node)
        assert value(samples, "denoise_sfu_worker_streams", worker=late.info["address"]) == 1
        assert value(samples, "denoise_sfu_worker_hops_sent_total",
                     worker=late.info["address"]) > 0
    finally:
        await arrivals.stop()
        for call in calls:
            await hang_up(session, call)


async def test_a_redis_outage_leaves_calls_running_and_answers_joins_503_until_it_returns(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    room = "outage"
    arrivals = Arrivals()
    speaker = await publish(session, cluster.nodes[0].url, room, "speaker", SECRET,
                            LoopTrack(noisy_tones(seed=3)))
    owner = speaker.base
    calls = [speaker]
    try:
        calls.append(await listen(session, owner, room, "listener", "speaker", SECRET,
                                  arrivals))
        await asyncio.wait_for(arrivals.arrived.wait(), 15)
        cluster.redis.stop()
        stopped = time.monotonic()
        before = await denoised(session, owner)
        for base in (n.url for n in cluster.nodes):
            token = issue_token(SECRET, "during-outage", "x", 600)
            async with session.post(f"{base}/whip/during-outage", data="v=0\r\n", headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
                    allow_redirects=False) as resp:
                assert resp.status == 503, await resp.text()
                assert int(resp.headers["Retry-After"]) >= 1
            async with session.ws_connect(f"{base}/ws") as ws:
                await ws.send_json({"type": "join", "token": token})
                message = await ws.receive_json(timeout=5)
                assert message["code"] == "placement_unavailable" and message["retry_after"] >= 1
        async with session.get(owner + "/readyz") as resp:
            assert resp.status == 503
            assert "coordinator_unreachable" in (await resp.json())["reasons"]
        await asyncio.sleep(2.0)
        assert await denoised(session, owner) > before + 40  # still denoised, 2 s later
        assert arrivals.max_gap(stopped, time.monotonic()) <= 0.100
        cluster.redis.start()  # empty: every lease and claim has to come back

        async def ready() -> bool:
            for node in cluster.nodes:
                async with session.get(node.url + "/readyz") as resp:
                    if resp.status != 200:
                        return False
            return True

        await wait_for(ready, "both nodes to find Redis again", timeout=5)
        other = cluster.other(owner).url
        late = Arrivals()
        calls.append(await listen(session, other, room, "late", "speaker", SECRET, late))
        assert calls[-1].base == owner  # the claim came back: still the owner
        await asyncio.wait_for(late.arrived.wait(), 15)
        await late.stop()
        fresh = await publish(session, other, "after-outage", "someone", SECRET,
                              LoopTrack(noisy_tones(seed=4)))
        calls.append(fresh)
    finally:
        await arrivals.stop()
        for call in calls:
            await hang_up(session, call)


async def test_a_draining_worker_hands_its_streams_over_and_exits(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    room = "worker-drain"
    arrivals = Arrivals()
    speaker = await publish(session, cluster.nodes[0].url, room, "speaker", SECRET,
                            LoopTrack(noisy_tones(seed=9)))
    node = speaker.base
    calls = [speaker]
    try:
        calls.append(await listen(session, node, room, "listener", "speaker", SECRET,
                                  arrivals))
        await asyncio.wait_for(arrivals.arrived.wait(), 15)
        await asyncio.sleep(0.5)
        before = await ascrape(session, node)
        victim = worker_of_stream(before, cluster)
        async with session.post(str(victim.info["metrics"]) + "/admin/drain",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 202
        began = time.monotonic()

        async def moved() -> bool:
            samples = await ascrape(session, node)
            return value(samples, "denoise_sfu_placement_streams_total", decision="moved") > \
                value(before, "denoise_sfu_placement_streams_total", decision="moved")

        await wait_for(moved, "the stream to move off the draining worker", timeout=5)
        await asyncio.to_thread(victim.proc.wait, 10)
        assert victim.proc.returncode == 0, victim.logs()
        assert '"msg": "drained"' in victim.logs()
        await asyncio.sleep(0.5)
        after = await ascrape(session, node)
        assert value(after, "denoise_sfu_frames_denoised_total") > value(
            before, "denoise_sfu_frames_denoised_total") + 20
        passed = value(after, "denoise_sfu_frames_passed_through_total",
                       reason="engine_error") - value(
            before, "denoise_sfu_frames_passed_through_total", reason="engine_error")
        gap = arrivals.max_gap(began, time.monotonic())
        print(f"worker drain: listener gap {gap * 1e3:.0f} ms, engine_error hops {passed}")
        assert gap <= 0.100 and passed <= 4  # one frame warms the other worker up
    finally:
        await arrivals.stop()
        for call in calls:
            await hang_up(session, call)


async def test_a_paused_node_loses_its_room_and_cannot_take_it_back(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    room = "paused"
    speaker = await publish(session, cluster.nodes[1].url, room, "speaker", SECRET,
                            LoopTrack(noisy_tones(seed=5)))
    paused, other = cluster.node(speaker.base), cluster.other(speaker.base)
    calls = [speaker]
    try:
        paused.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(3.6)  # past its 3 s lease
            newcomer = await publish(session, other.url, room, "newcomer", SECRET,
                                     LoopTrack(noisy_tones(seed=6)))
            calls.append(newcomer)
            assert newcomer.base == other.url and newcomer.redirects == 0
        finally:
            paused.proc.send_signal(signal.SIGCONT)

        async def gave_up() -> bool:
            samples = await ascrape(session, paused.url)
            return value(samples, "denoise_sfu_placement_rooms_lost_total") >= 1 and \
                value(samples, "denoise_sfu_participants") == 0

        await wait_for(gave_up, "the paused node to stop serving the room", timeout=5)
        await asyncio.sleep(1.5)  # a few of its beats: none may take the room back
        token = issue_token(SECRET, room, "third", 600)
        async with session.post(f"{paused.url}/whip/{room}", data="v=0\r\n", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
                allow_redirects=False) as resp:
            assert resp.status == 307
            assert resp.headers["Location"] == f"{other.url}/whip/{room}"
        samples = await ascrape(session, other.url)
        assert value(samples, "denoise_sfu_participants") >= 1
        async with session.get(paused.url + "/readyz") as resp:
            assert resp.status == 200  # registered again, serving its other rooms
    finally:
        for call in calls:
            await hang_up(session, call)


async def test_a_draining_node_keeps_its_call_sends_new_rooms_elsewhere_and_exits(
        cluster: Cluster, session: aiohttp.ClientSession) -> None:
    third = wait_ready(spawn_node(cluster.tmp, "c", cluster.host, cluster.redis.url, SECRET))
    cluster.nodes.append(third)
    arrivals = Arrivals()
    calls: list[Call] = []
    try:
        # Load the two others so that the new node is the least loaded: the room goes there.
        speaker = await publish(session, third.url, "drained", "speaker", SECRET,
                                LoopTrack(noisy_tones(seed=7)))
        calls.append(speaker)
        assert speaker.base == third.url
        calls.append(await listen(session, third.url, "drained", "listener", "speaker", SECRET,
                                  arrivals))
        await asyncio.wait_for(arrivals.arrived.wait(), 15)
        async with session.post(third.url + "/admin/drain") as resp:
            assert resp.status == 401
        async with session.post(third.url + "/admin/drain",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 202
        began = time.monotonic()
        async with session.get(third.url + "/healthz") as resp:
            health = await resp.json()
            assert resp.status == 200 and health["status"] == "draining"
        async with session.get(third.url + "/readyz") as resp:
            assert resp.status == 503 and "draining" in (await resp.json())["reasons"]
        newcomer = await publish(session, third.url, "new-room", "x", SECRET,
                                 LoopTrack(noisy_tones(seed=8)))
        calls.append(newcomer)
        assert newcomer.base != third.url and newcomer.redirects == 1
        before = await denoised(session, third.url)
        await asyncio.sleep(1.0)
        assert await denoised(session, third.url) > before + 10  # the call goes on, denoised
        assert arrivals.max_gap(began, time.monotonic()) <= 0.100
        assert third.proc.poll() is None
        await arrivals.stop()
        for call in calls[:2]:
            await hang_up(session, call)
        with contextlib.suppress(Exception):
            third.proc.wait(timeout=10)
        assert third.proc.returncode == 0, third.logs()
        assert '"msg": "drained"' in third.logs()
    finally:
        await arrivals.stop()
        for call in calls:
            await hang_up(session, call)
