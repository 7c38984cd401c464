"""`denoise-sfu bench soak --minutes M`: calls join and leave at a steady rate against a live
`serve` + `worker` (real processes on 127.0.0.1, `sfu.bench.fuzz.system`), some with packet
loss and reordering, and every frame is accounted for.

Calls alternate between two kinds, each in a room of its own:
- `whip`: a WHIP publisher (real noisy speech, mode on) and a WHEP subscriber to it;
- `ws`: two WebSocket clients of the room protocol, each publishing and hearing the other.
Every `--impair-every`-th call's publishers lose `--loss` of their RTP packets and send
`--reorder` of them after the next one: impaired at the client before sending, so what the
server gets is still real UDP. A call lasts `--call-seconds`; a new one starts every
`60 / --calls-per-minute` seconds (at most `--max-calls` at once). A call ends cleanly: its
publishers stop sending, then (after the last packets' trip) everyone leaves with DELETE or
`leave`.

Accounting, from the clients' counts and the server's /metrics over the whole soak:
- uplink: RTP packets the publishers put on the wire = frames the server's pipelines took
  (`media_events{frame_in}`) + frames it dropped as late, bad or unread in time
  (`frames_dropped`) + packets its receivers dropped (`rtp_packets_total` by outcome: late or
  duplicate, over the receiver's bounds) + `unaccounted_up` (lost without a counter: must
  be about 0; packets still in a jitter buffer when a call ends are within the tolerance);
- downlink: packets the server handed to its senders (`media_events{packet_out}`) = RTP
  packets the subscribers received + `subscriber_queue` drops + `unaccounted_down`.
At the start (after one warm-up call of each kind) and the end: RSS, fds and threads of both
processes (/proc) and the server's event-loop tasks (`denoise_sfu_asyncio_tasks`); the count
of 5xx (must be 0). One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sfu.auth import issue_token
from sfu.bench.fuzz.system import (
    LiveSystem,
    live_system,
    metric_sum,
    server_5xx,
    server_503,
    thread_names,
)
from sfu.bench.harness import interface_address, wait_for
from sfu.media.metrics import RTP_OUTCOMES

SETTLE_S = 1.5  # the last packets' trip (and decode, on a busy machine) before peers leave
CONNECT_S = 20.0


@dataclass
class Counts:
    sent: int = 0  # RTP packets put on the wire by publishers
    lost: int = 0  # dropped by the impairment
    reordered: int = 0
    received: int = 0  # RTP packets that reached subscribers
    calls: int = 0
    impaired_calls: int = 0
    failed_calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)


class Uplink:
    """Counts (and impairs) one publisher's RTP at its DTLS transport's `_send_rtp`."""

    def __init__(self, counts: Counts, loss: float, reorder: float, seed: int) -> None:
        self.counts, self.loss, self.reorder = counts, loss, reorder
        self.rng = random.Random(seed)
        self.held: bytes | None = None
        self.stopped = False

    def install(self, pc: Any) -> None:
        from aiortc.rtp import is_rtcp

        transport = pc.getTransceivers()[0].sender.transport
        send = transport._send_rtp

        async def impaired(data: bytes) -> None:
            if is_rtcp(data):
                await send(data)
                return
            if self.stopped:
                return  # the call is ending: nothing more goes out (and nothing is counted)
            if self.rng.random() < self.loss:
                self.counts.lost += 1
                return
            if self.held is None and self.rng.random() < self.reorder:
                self.held = data  # goes out after the next one
                self.counts.reordered += 1
                return
            self.counts.sent += 1
            await send(data)
            if self.held is not None:
                held, self.held = self.held, None
                self.counts.sent += 1
                await send(held)

        transport._send_rtp = impaired


def count_receiver(receiver: Any, counts: Counts) -> None:
    """Count every RTP packet reaching `receiver` (before any jitter buffer)."""
    handle = receiver._handle_rtp_packet

    async def counted(packet: Any, arrival_time_ms: int) -> None:
        counts.received += 1
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = counted


def count_downlink(pc: Any, counts: Counts) -> None:
    for transceiver in pc.getTransceivers():
        count_receiver(transceiver.receiver, counts)


async def drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _track(noisy: Any) -> Any:
    from sfu.bench.fuzz.call import loop_track

    return loop_track(noisy)


async def whip_call(system: LiveSystem, n: int, seconds: float, uplink: Uplink,
                    counts: Counts, noisy: Any) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    room = f"soak{n}".replace("-", "w")
    pub, sub = RTCPeerConnection(), RTCPeerConnection()
    tokens = (issue_token(system.secret, room, "speaker", 600, ("publish",)),
              issue_token(system.secret, room, "listener", 600, ("subscribe",)))
    locations: list[tuple[str, str]] = []
    track = _track(noisy)

    async def post(pc: Any, path: str, token: str) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        async with system.session.post(system.url(path), data=pc.localDescription.sdp,
                                       headers={"Authorization": f"Bearer {token}",
                                                "Content-Type": "application/sdp"}) as resp:
            counts.statuses[str(resp.status)] = counts.statuses.get(str(resp.status), 0) + 1
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"POST {path}: {resp.status} {body[:200]}")
            locations.append((resp.headers["Location"], token))
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    try:
        pub.addTransceiver(track, direction="sendonly")
        await post(pub, f"/whip/{room}?mode=on", tokens[0])
        uplink.install(pub)
        await wait_for(lambda: pub.connectionState == "connected", "publisher", CONNECT_S)
        sub.addTransceiver("audio", direction="recvonly")
        sub.on("track", lambda t: asyncio.ensure_future(drain(t)))
        await post(sub, f"/whep/{room}/speaker", tokens[1])
        count_downlink(sub, counts)
        await wait_for(lambda: sub.connectionState == "connected", "subscriber", CONNECT_S)
        await asyncio.sleep(seconds)
    finally:
        uplink.stopped = True
        await asyncio.sleep(SETTLE_S)
        for location, token in reversed(locations):
            with contextlib.suppress(aiohttp.ClientError):
                async with system.session.delete(system.url(location), headers={
                        "Authorization": f"Bearer {token}"}) as resp:
                    key = str(resp.status)
                    counts.statuses[key] = counts.statuses.get(key, 0) + 1
        track.stop()
        await pub.close()
        await sub.close()


async def ws_client(system: LiveSystem, room: str, identity: str, uplink: Uplink,
                    counts: Counts, noisy: Any, ready: asyncio.Event,
                    done: asyncio.Event) -> None:
    """One WebSocket participant: publishes, answers the server's offers, hears the others."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    track = _track(noisy)
    pc.addTransceiver(track, direction="sendonly")
    pc.on("track", lambda t: asyncio.ensure_future(drain(t)))
    token = issue_token(system.secret, room, identity, 600)
    counted: set[int] = set()

    def count_new() -> None:
        for i, transceiver in enumerate(pc.getTransceivers()):
            if i and i not in counted:  # the first transceiver is our own microphone
                counted.add(i)
                count_receiver(transceiver.receiver, counts)

    try:
        async with system.session.ws_connect(system.url("/ws")) as ws:
            await ws.send_json({"type": "join", "token": token, "mode": "on"})
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
            installed = False
            while not done.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except TimeoutError:
                    if pc.connectionState == "connected":
                        ready.set()
                    continue
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data["type"] == "answer":
                    await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
                    if not installed:
                        uplink.install(pc)
                        installed = True
                elif data["type"] == "offer":
                    await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
                    await pc.setLocalDescription(await pc.createAnswer())
                    count_new()
                    await ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})
                elif data["type"] == "error":
                    key = f"ws:{data.get('code')}"
                    counts.errors[key] = counts.errors.get(key, 0) + 1
            uplink.stopped = True
            await asyncio.sleep(SETTLE_S)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": "leave"})
                await ws.receive(timeout=2.0)
    finally:
        uplink.stopped = True
        track.stop()
        await pc.close()


async def ws_call(system: LiveSystem, n: int, seconds: float, uplinks: list[Uplink],
                  counts: Counts, noisy: Any) -> None:
    room = f"soakws{n}".replace("-", "w")
    readies = [asyncio.Event(), asyncio.Event()]
    done = asyncio.Event()
    clients = [asyncio.ensure_future(ws_client(system, room, f"u{i}", uplinks[i], counts, noisy,
                                               readies[i], done)) for i in range(2)]
    try:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), CONNECT_S)
        await asyncio.sleep(seconds)
    finally:
        for uplink in uplinks:  # both stop sending at once, then leave together
            uplink.stopped = True
        await asyncio.sleep(SETTLE_S)
        done.set()
        await asyncio.gather(*clients, return_exceptions=True)


async def one_call(system: LiveSystem, n: int, args: argparse.Namespace, counts: Counts,
                   noisy: Any) -> None:
    impaired = args.impair_every > 0 and n >= 0 and n % args.impair_every == args.impair_every - 1
    loss, reorder = (args.loss, args.reorder) if impaired else (0.0, 0.0)
    counts.calls += 1
    counts.impaired_calls += impaired
    try:
        if n % 2 == 0:
            await whip_call(system, n, args.call_seconds, Uplink(counts, loss, reorder, n),
                            counts, noisy)
        else:
            await ws_call(system, n, args.call_seconds,
                          [Uplink(counts, loss, reorder, 1000 * n + i) for i in range(2)],
                          counts, noisy)
    except Exception as err:
        counts.failed_calls += 1
        key = f"{type(err).__name__}: {str(err)[:80]}"
        counts.errors[key] = counts.errors.get(key, 0) + 1
        print(f"call {n} failed: {key}", flush=True)


def server_counts(metrics: dict[str, float]) -> dict[str, int]:
    def ev(name: str) -> int:
        return int(metric_sum(metrics, "denoise_sfu_media_events_total", event=name))

    def drop(reason: str) -> int:
        return int(metric_sum(metrics, "denoise_sfu_frames_dropped_total", reason=reason))

    return {"frame_in": ev("frame_in"), "packet_out": ev("packet_out"),
            "raw_packet_out": ev("raw_packet_out"), "input_late": drop("input_late"),
            "input_bad": drop("input_bad"), "subscriber_queue": drop("subscriber_queue"),
            "denoised": int(metric_sum(metrics, "denoise_sfu_frames_denoised_total")),
            "passed_through": int(metric_sum(metrics,
                                             "denoise_sfu_frames_passed_through_total")),
            "peer_failures": int(metric_sum(metrics, "denoise_sfu_peer_failures_total")),
            **{f"rtp_{outcome}": int(metric_sum(metrics, "denoise_sfu_rtp_packets_total",
                                                outcome=outcome)) for outcome in RTP_OUTCOMES},
            "receive_queue": drop("receive_queue")}


async def snapshot(system: LiveSystem) -> dict[str, Any]:
    metrics = await system.metrics()
    stats = system.stats()
    return {"server": {**stats["server"].as_dict(),
                       "asyncio_tasks": int(metric_sum(metrics, "denoise_sfu_asyncio_tasks")),
                       "thread_names": thread_names(system.server.pid)},
            "worker": stats["worker"].as_dict(), "metrics": metrics}


def rss_trend(samples: list[tuple[float, float]], end_mib: float, run_s: float
              ) -> dict[str, Any]:
    """Whether the server's RSS still rises once warm: the middle third of the run against the
    last third (and the end), top against top and bottom against bottom. The first third is left
    out of the judgement, not of the report: a cold server reads in library pages and grows its
    allocator's arenas up to the high-water mark of the calls at once, and that is paid once.
    Envelopes, not single samples: between two heap trims the RSS saws up and down by tens of
    MiB (glibc's free space, returned by `malloc_trim`), so one sample against a maximum would
    measure the saw. Flat: neither envelope rises by more than max(8 MiB, 5 %)."""
    middle = [r for t, r in samples if run_s / 3 <= t < 2 * run_s / 3]
    late = [r for t, r in samples if t >= 2 * run_s / 3] + [end_mib]
    if not middle:  # too short a run to tell: said so, and left to the other checks
        return {"warm_at_s": None, "middle_mib": None, "late_mib": [min(late), max(late)],
                "growth_mib": None, "judged": False, "flat": True}
    top, bottom = max(late) - max(middle), min(late) - min(middle)
    growth = max(top, bottom)
    return {"warm_at_s": round(run_s / 3),
            "middle_mib": [round(min(middle), 1), round(max(middle), 1)],
            "late_mib": [round(min(late), 1), round(max(late), 1)],
            "top_growth_mib": round(top, 1), "bottom_growth_mib": round(bottom, 1),
            "growth_mib": round(growth, 1), "judged": True,
            "flat": growth <= max(8.0, 0.05 * max(middle))}


async def _bench(args: argparse.Namespace) -> int:
    from sfu.bench.fuzz.call import noisy_speech

    media_host = interface_address()
    if media_host.startswith("127."):
        raise SystemExit("no non-loopback interface: aiortc peers cannot meet")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="denoise-sfu-soak-"))
    noisy = noisy_speech()
    counts = Counts()
    began = time.monotonic()
    async with live_system(log_dir, media_host, connect_timeout=10.0,
                           max_streams=args.max_streams) as system:
        print(f"server {system.base_url} (pid {system.server.pid}), worker pid "
              f"{system.worker.proc.pid}, logs in {log_dir}", flush=True)
        # One call of each kind first, outside the figures: the first peers pay for imports,
        # thread pools and allocator arenas that every later call reuses.
        warm = Counts()
        for i in range(2):
            await one_call(system, -2 + i, args, warm, noisy)
        if warm.failed_calls:
            print(f"warm-up calls failed: {warm.errors}", flush=True)
        start = await snapshot(system)
        print(f"start: server {start['server']}, worker {start['worker']}", flush=True)
        interval = 60.0 / args.calls_per_minute
        end_at = time.monotonic() + 60.0 * args.minutes
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        next_at = time.monotonic()
        samples: list[tuple[float, float]] = []  # (seconds into the run, server RSS MiB)
        run_began = time.monotonic()
        while time.monotonic() < end_at:
            if len(tasks) < args.max_calls:
                task = asyncio.ensure_future(one_call(system, n, args, counts, noisy))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if n % 10 == 0:
                stats = system.stats()
                samples.append((time.monotonic() - run_began, stats["server"].rss_kib / 1024))
                print(f"{time.monotonic() - began:.0f} s: {counts.calls} calls "
                      f"({len(tasks)} live), server {stats['server'].as_dict()}", flush=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        settle_began = time.monotonic()
        end = await snapshot(system)
        while time.monotonic() - settle_began < args.settle:  # sessions close, tasks end
            end = await snapshot(system)
            if (end["server"]["fds"] <= start["server"]["fds"]
                    and end["server"]["asyncio_tasks"] <= start["server"]["asyncio_tasks"]):
                break
            await asyncio.sleep(1.0)
        health = await system.healthz()
    s0, s1 = server_counts(start["metrics"]), server_counts(end["metrics"])
    d = {k: s1[k] - s0[k] for k in s0}
    # Every packet on the wire is decoded into a frame the pipeline takes, or dropped by a
    # counter: late or duplicate, over the receiver's bounds, or a decoded frame nobody took.
    counted_drops = sum(d[f"rtp_{outcome}"] for outcome in RTP_OUTCOMES
                        if outcome not in ("released", "missing"))
    unaccounted_up = counts.sent - d["frame_in"] - d["input_late"] - d["input_bad"] \
        - d["receive_queue"] - counted_drops
    unaccounted_down = d["packet_out"] + d["raw_packet_out"] - counts.received \
        - d["subscriber_queue"]
    errors_5xx = server_5xx(end["metrics"]) - server_5xx(start["metrics"])
    # A clean leave loses nothing upstream;
    # downstream a packet or so per call can be in flight when its subscriber leaves.
    tolerance = 2 * counts.calls + round(0.001 * counts.sent)
    accounted = (abs(unaccounted_up) <= tolerance and abs(unaccounted_down) <= tolerance)
    # Threads are reported apart (2 per encoding speaker while calls are live: FFmpeg's pool
    # of each encoder's filter graph, freed when the speaker leaves).
    threads_flat = end["server"]["threads"] <= start["server"]["threads"] + 4
    trend = rss_trend(samples, end["server"]["rss_mib"], 60.0 * args.minutes)
    server_flat = (end["server"]["fds"] <= start["server"]["fds"] + 4
                   and end["server"]["asyncio_tasks"] <= start["server"]["asyncio_tasks"] + 2
                   and trend["flat"])
    summary = {
        "bench": "soak", "minutes": args.minutes, "seconds": round(time.monotonic() - began, 1),
        "calls": counts.calls, "impaired_calls": counts.impaired_calls,
        "failed_calls": counts.failed_calls, "loss": args.loss, "reorder": args.reorder,
        "server": {"start": start["server"], "end": end["server"], "rss_trend": trend,
                   "rss_samples": [[round(t), round(r, 1)] for t, r in samples]},
        "worker": {"start": start["worker"], "end": end["worker"]},
        "frames": {"sent": counts.sent, "lost_by_impairment": counts.lost,
                   "reordered": counts.reordered, "server_frame_in": d["frame_in"],
                   "server_dropped_late": d["input_late"], "server_dropped_bad": d["input_bad"],
                   "unaccounted_up": unaccounted_up,
                   "server_packets_out": d["packet_out"] + d["raw_packet_out"],
                   "subscriber_queue_drops": d["subscriber_queue"],
                   "subscribers_received": counts.received,
                   "unaccounted_down": unaccounted_down, "tolerance": tolerance,
                   "server_rtp": {k[4:]: v for k, v in d.items() if k.startswith("rtp_")},
                   "server_receive_queue_drops": d["receive_queue"]},
        "hops": {"denoised": d["denoised"], "passed_through": d["passed_through"]},
        "peer_failures": d["peer_failures"],
        "server_5xx": errors_5xx,
        "server_503": server_503(end["metrics"]) - server_503(start["metrics"]),
        "statuses": counts.statuses, "errors": counts.errors,
        "healthz": health is not None, "log_errors": system.log_errors(),
        "accounted": accounted, "flat": server_flat, "threads_flat": threads_flat,
        "ok": (errors_5xx == 0 and accounted and server_flat and health is not None
               and counts.failed_calls == 0),
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


def run_bench_soak(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.calls_per_minute <= 0 or args.max_calls < 1:
        raise SystemExit("--minutes, --calls-per-minute and --max-calls must be positive")
    return asyncio.run(_bench(args))


def register_bench_soak(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "soak", help="calls join and leave at a steady rate (WHIP/WHEP and WebSocket, some "
                     "lossy), against a live serve + worker; RSS, fds, tasks, frames, 5xx")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--calls-per-minute", type=float, default=20.0)
    parser.add_argument("--call-seconds", type=float, default=6.0)
    parser.add_argument("--max-calls", type=int, default=3, help="calls at once, at most")
    parser.add_argument("--impair-every", type=int, default=3,
                        help="every Nth call's publishers are impaired (0: none)")
    parser.add_argument("--loss", type=float, default=0.05, help="share of RTP packets lost")
    parser.add_argument("--reorder", type=float, default=0.05,
                        help="share of RTP packets sent after the next one")
    parser.add_argument("--max-streams", type=int, default=16, help="the worker's slots")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds at the end for fds and tasks to come back")
    parser.add_argument("--log-dir", default=None)
    parser.set_defaults(func=run_bench_soak)
    return parser
