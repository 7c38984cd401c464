"""The Redis placement against a real `redis-server` (started here on a free loopback port):
claims, least-loaded choice with pending placements, capacity and draining, fencing epochs,
racing claims from two real processes, Redis losing its data, worker leases."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from denoiser.worker.registry import WorkerRegistration, read_workers
from sfu.placement import NoCapacity, PlacementUnavailable
from sfu.placement.memory import MemoryPlacement
from sfu.placement.redis import RedisPlacement
from support.placement import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


class FakeNode(set[str]):
    """What a placement reads of its node: the rooms with sessions (set by the test)."""

    def __call__(self) -> tuple[list[str], int]:
        return sorted(self), len(self)


def make(url: str, node: str, capacity: int = 10, lease_s: float = 3.0,
         beat_s: float = 1.0) -> tuple[RedisPlacement, FakeNode]:
    hosted = FakeNode()
    return RedisPlacement(url, node, f"http://{node}.test", capacity, hosted, lease_s=lease_s,
                          beat_s=beat_s), hosted


async def test_claims_go_to_the_least_loaded_node_counting_pending_ones(
        redis_server: RedisServer, redis: Redis) -> None:
    a, a_rooms = make(redis_server.url, "a")
    b, _ = make(redis_server.url, "b")
    await a.start()
    await b.start()
    try:
        first = await a.claim("r1")  # a tie: the asking node keeps it (no redirect)
        assert first.mine and first.node == "a" and first.epoch >= 1
        # a has one room placed and not yet in its load: the next new room goes to b.
        second = await a.claim("r2")
        assert not second.mine and second.node == "b" and second.url == "http://b.test"
        assert second.epoch > first.epoch
        # Asking again anywhere finds the same owner and epoch.
        again = await b.claim("r1")
        assert (again.node, again.epoch, again.mine) == ("a", first.epoch, False)
        assert await b.locate("r2") == (await b.claim("r2"))
        assert await a.locate("nobody-here") is None
        a_rooms.add("r1")
        await a.beat()  # confirms r1: no expiry any more, counted in a's load
        assert await redis.pttl("dsfu:room:r1") == -1
        assert await redis.pttl("dsfu:room:r2") > 0  # b has not seen a session yet
        assert a.stats.decisions["local"] == 1 and a.stats.decisions["redirect"] == 1
    finally:
        await a.close()
        await b.close()
    assert await redis.exists("dsfu:node:a", "dsfu:node:b") == 0  # deregistered at once
    assert await redis.smembers("dsfu:nodes") == set()


async def test_capacity_and_draining_are_filtered(redis_server: RedisServer) -> None:
    a, _ = make(redis_server.url, "a", capacity=1)
    b, _ = make(redis_server.url, "b", capacity=5)
    await a.start()
    await b.start()
    try:
        assert (await a.claim("r1")).node == "a"
        await b.drain()
        with pytest.raises(NoCapacity) as err:  # a is full, b drains
            await a.claim("r2")
        assert err.value.retry_after >= 1
        assert (await b.claim("r1")).node == "a"  # existing rooms stay where they are
        assert a.stats.decisions["no_capacity"] == 1
    finally:
        await a.close()
        await b.close()


async def test_an_empty_room_is_released(redis_server: RedisServer, redis: Redis) -> None:
    a, rooms = make(redis_server.url, "a")
    await a.start()
    try:
        owner = await a.claim("r1")
        rooms.add("r1")
        await a.beat()
        rooms.discard("r1")
        await a.beat()
        assert await redis.exists("dsfu:room:r1") == 0
        assert a.stats.rooms_released == 1 and a.held_rooms == {}
        assert (await a.claim("r1")).epoch > owner.epoch  # a new claim, a larger epoch
    finally:
        await a.close()


async def test_a_lapsed_owner_loses_its_room_and_cannot_take_it_back(
        redis_server: RedisServer, redis: Redis) -> None:
    a, a_rooms = make(redis_server.url, "a", lease_s=0.6, beat_s=0.2)
    b, b_rooms = make(redis_server.url, "b", lease_s=0.6, beat_s=0.2)
    lost: list[str] = []
    a.on_lost(lost.append)
    await a.beat()  # registered, but no beating task: its lease will lapse
    await b.start()
    try:
        old = await a.claim("r1")
        a_rooms.add("r1")
        await a.beat()
        await asyncio.sleep(0.9)  # a's lease lapses (it stopped beating)
        new = await b.claim("r1")
        assert new.mine and new.epoch > old.epoch
        b_rooms.add("r1")
        await b.beat()
        assert await a.beat()  # a comes back: its beat shows r1 under b's epoch
        assert lost == ["r1"] and "r1" not in a.held_rooms
        assert a.stats.lease_lapses == 1 and a.stats.rooms_lost == 1
        # The stale owner's release (old epoch) changes nothing; b still owns r1.
        await a._release(keys=["dsfu:room:r1", "dsfu:pending:a"], args=["a", old.epoch, "r1"])
        assert await redis.hgetall("dsfu:room:r1") == {"node": "b", "url": "http://b.test",
                                                       "epoch": str(new.epoch)}
        assert not (await a.claim("r1")).mine
    finally:
        await a.close()
        await b.close()


async def test_redis_losing_its_data_restores_leases_and_claims_with_larger_epochs(
        redis_server: RedisServer) -> None:
    a, rooms = make(redis_server.url, "a", beat_s=0.2)
    await a.start()
    try:
        for room in ("r1", "r2", "r3"):
            await a.claim(room)
            rooms.add(room)
        epochs = a.held_rooms
        redis_server.stop()
        with pytest.raises(PlacementUnavailable) as err:
            await a.claim("r4")
        assert err.value.retry_after >= 1
        assert not await a.beat() and not a.reachable
        redis_server.start()  # empty: every key is gone
        await asyncio.sleep(0.6)
        assert a.reachable
        restored = a.held_rooms
        assert restored.keys() == epochs.keys()
        assert min(restored.values()) > max(epochs.values())  # the epoch never goes back
        b, _ = make(redis_server.url, "b")
        await b.start()
        assert (await b.claim("r2")).node == "a"
        await b.close()
    finally:
        await a.close()


RACER = textwrap.dedent("""
    import asyncio, json, sys, time
    from sfu.placement.redis import RedisPlacement

    async def main(url, node, start_at, rooms):
        placement = RedisPlacement(url, node, f"http://{node}.test", 100000, lambda: ([], 0))
        await placement.start()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        owners = []
        for first in range(0, rooms, 16):  # 16 joins at once per node, as a busy node sees
            owners += await asyncio.gather(*(placement.claim(f"race-{i}")
                                             for i in range(first, min(rooms, first + 16))))
        print(json.dumps([[o.node, o.epoch, o.mine] for o in owners]))

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
""")


def test_two_processes_racing_for_the_same_rooms_end_with_one_owner_each(
        redis_server: RedisServer, tmp_path: Path) -> None:
    import redis as redis_sync

    script = tmp_path / "racer.py"
    script.write_text(RACER)
    rooms = 300
    start_at = time.time() + 2.5  # both processes registered by then
    procs = [subprocess.Popen([sys.executable, str(script), redis_server.url, node,
                               str(start_at), str(rooms)], stdout=subprocess.PIPE, text=True)
             for node in ("n1", "n2")]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0
        results.append(json.loads(out))
    stored = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    won = {"n1": 0, "n2": 0}
    for i, (one, two) in enumerate(zip(*results, strict=True)):
        assert one[:2] == two[:2], f"race-{i}: {one} vs {two}"  # same owner, same epoch
        assert one[2] + two[2] == 1  # exactly one of them serves it
        assert stored.hget(f"dsfu:room:race-{i}", "node") == one[0]
        won[one[0]] += 1
    epochs = [r[1] for r in results[0]]
    assert len(set(epochs)) == rooms  # one claim each: every epoch taken once
    assert won["n1"] and won["n2"], won  # both raced (and least-loaded spread the rooms)
    stored.close()


async def test_memory_placement_keeps_every_room_here_and_refuses_new_ones_when_draining(
        ) -> None:
    hosted: list[str] = []
    placement = MemoryPlacement("solo", "http://solo.test", max_rooms=2, hosted=lambda: hosted)
    owner = await placement.claim("r1")
    assert owner.mine and owner.url == "http://solo.test"
    hosted.append("r1")
    assert (await placement.claim("r1")).epoch == owner.epoch
    await placement.drain()
    assert (await placement.claim("r1")).mine  # its calls go on
    with pytest.raises(NoCapacity):
        await placement.claim("r2")
    assert await placement.locate("r2") is None


async def test_workers_register_with_a_lease_and_deregister_at_once(
        redis_server: RedisServer, redis: Redis) -> None:
    load = [0]
    one = WorkerRegistration(redis_server.url, "w1", "127.0.0.1:7101", 8, lambda: load[0],
                             beat_s=0.2, lease_s=0.6)
    two = WorkerRegistration(redis_server.url, "w2", "127.0.0.1:7102", 4, lambda: 0,
                             beat_s=0.2, lease_s=0.6)
    await one.start()
    await two.beat()  # registered once, then silent: its lease lapses
    load[0] = 3
    await asyncio.sleep(0.3)
    workers = {w.worker_id: w for w in await read_workers(redis)}
    assert workers["w1"].address == "127.0.0.1:7101" and workers["w1"].free == 5
    assert workers["w2"].capacity == 4
    await asyncio.sleep(0.6)
    assert [w.worker_id for w in await read_workers(redis)] == ["w1"]  # w2 lapsed
    await one.drain()
    assert (await read_workers(redis))[0].draining
    await one.close()
    await two.close()
    assert await read_workers(redis) == []
    assert await redis.smembers("dsfu:workers") == set()
