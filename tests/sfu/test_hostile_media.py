"""Hostile and unlucky media clients (issue 14, items 3, 4-WS, 6, 8): real aiortc peers and real
WebSocket clients against a real SFU on the interface, the real LocalEngine (GainModel).

- Audio the server does not consume (a WHEP `sendrecv` offer, extra audio sections in a WHIP
  offer, a WebSocket client without the publish grant) is counted and dropped, never decoded
  or queued; the server's queues are measured on the receiver objects themselves.
- A receiver sprayed with RTP from ever new SSRCs keeps its routing and statistics bounded.
- A WebSocket session whose media never connects is ended at the connect deadline, releasing
  its participant, engine slot and peer connection.
- A re-join during the first offer leaves no UDP socket behind (counted in /proc).
- A pipeline task that raises restarts once in pass-through, then removes the participant and
  tells its client; never silent.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpByePacket, RtcpRtpfbPacket, RtpPacket
from prometheus_client.parser import text_string_to_metric_families

from denoiser.engine import Engine
from sfu.bench.harness import ToneTrack
from sfu.media.guards import MAX_SSRCS, TokenBucket
from sfu.media.receiver import DiscardJitterBuffer, DropOldestPacketQueue, DropOldestQueue
from sfu.signalling.peer import MAX_MEDIA_SECTIONS
from sfu.signalling.ws import WS_HUB
from support.browser.wsclient import WsPeer
from support.peers import Client, wait_for
from support.sfu import RunningSfu

pytestmark = pytest.mark.timeout(120)

JITTER = "_RTCRtpReceiver__jitter_buffer"
DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


# -- helpers ---------------------------------------------------------------------------------

async def metric(sfu: RunningSfu, name: str, labels: dict[str, str] | None = None,
                 **more: str) -> float:
    """One sample of the server's /metrics (scraped over HTTP, as Prometheus would)."""
    labels = {**(labels or {}), **more}
    async with sfu.session.get(sfu.url("/metrics")) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def rtp(outcome: str) -> tuple[str, dict[str, str]]:
    return "denoise_sfu_rtp_packets_total", {"outcome": outcome}


def queue_depths(pc: RTCPeerConnection) -> list[tuple[int, int]]:
    """(decoder input packets, decoded frames) queued on each receiver of `pc`."""
    return [(getattr(r, DECODER_QUEUE).qsize(), r.track._queue.qsize())
            for r in pc.getReceivers() if r.track is not None]


def udp_sockets() -> int:
    """UDP sockets this process holds (its fds whose inode is in /proc/net/udp{,6})."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                inodes.add(line.split()[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", link)
        if match and match.group(1) in inodes:
            count += 1
    return count


async def whep_sendrecv(sfu: RunningSfu, token: str, room: str, target: str
                        ) -> tuple[RTCPeerConnection, list[np.ndarray], str]:
    """A WHEP subscriber that offers `sendrecv` and really sends a tone the whole time."""
    pc = RTCPeerConnection()
    pc.addTrack(ToneTrack(660.0))
    received: list[np.ndarray] = []

    async def collect(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                received.append(frame.to_ndarray().reshape(-1) / 32768.0)
        except MediaStreamError:
            pass

    pc.on("track", lambda track: asyncio.ensure_future(collect(track)))
    await pc.setLocalDescription(await pc.createOffer())
    assert "a=sendrecv" in pc.localDescription.sdp
    async with sfu.session.post(sfu.url(f"/whep/{room}/{target}"),
                                data=pc.localDescription.sdp,
                                headers={"Authorization": f"Bearer {token}",
                                         "Content-Type": "application/sdp"}) as resp:
        assert resp.status == 201, await resp.text()
        location = resp.headers["Location"]
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await wait_for(lambda: pc.connectionState == "connected")
    return pc, received, location.rsplit("/", 1)[1]


async def publisher(sfu: RunningSfu, make_token: Callable[..., str], room: str, identity: str,
                    audio: Path) -> Client:
    client = Client(sfu, make_token(room, identity))
    assert await client.publish(room, audio, mode="on") == 201
    return client


# -- item 3: unread audio --------------------------------------------------------------------

async def test_whep_sendrecv_audio_is_discarded_not_queued(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    alice = await publisher(sfu, make_token, "r", "alice", speech_opus)
    pc, received, session_id = await whep_sendrecv(sfu, make_token("r", "bob"), "r", "alice")
    try:
        sub = sfu.ctx.registry.find(session_id)
        server_pc = sub.pc.pc  # the WhepSender's peer connection
        receivers = [r for r in server_pc.getReceivers() if r.track is not None]
        assert len(receivers) == 1
        unread_before = await metric(sfu, *rtp("unread"))
        depths = []
        for _ in range(8):  # 4 s of the subscriber sending 50 packets a second
            await asyncio.sleep(0.5)
            depths.append(queue_depths(server_pc)[0])
        unread = await metric(sfu, *rtp("unread")) - unread_before
        # Nothing it sends is decoded or queued (aiortc queued ~50 frames a second, forever).
        assert max(max(d) for d in depths) == 0, depths
        assert unread >= 100, unread  # ...and every packet is counted
        assert isinstance(getattr(receivers[0], JITTER), DiscardJitterBuffer)
        assert getattr(receivers[0], JITTER).packets_discarded >= unread
        # The subscriber still hears alice, the call is unharmed.
        await wait_for(lambda: len(received) >= 50)
    finally:
        await pc.close()
        await alice.close()


async def test_whip_extra_audio_sections_connect_and_are_discarded(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    client = Client(sfu, make_token("r", "alice"))
    client.pc.addTrack(ToneTrack(440.0))
    client.pc.addTrack(ToneTrack(880.0))  # a second audio m-line nobody asked for
    client.pc.addTrack(ToneTrack(990.0))  # and a third
    try:
        assert await client.post("/whip/r") == 201
        # The extra sections are answered inactive: the client does not even send them.
        assert [t.currentDirection for t in client.pc.getTransceivers()] == [
            "sendonly", "inactive", "inactive"]
        participant = sfu.ctx.registry.get("r").participants["alice"]
        server_pc = participant.pc
        receivers = [r for r in server_pc.getReceivers() if r.track is not None]
        assert len(receivers) == 3
        consumed = [r for r in receivers if r.track is participant.pipeline.source]
        assert len(consumed) == 1
        extra = [r for r in receivers if r not in consumed]
        assert all(isinstance(getattr(r, JITTER), DiscardJitterBuffer) for r in extra)
        assert isinstance(consumed[0].track._queue, DropOldestQueue)
        await asyncio.sleep(3.0)
        for r in extra:
            assert getattr(r, DECODER_QUEUE).qsize() == 0 and r.track._queue.qsize() == 0
        # The published section is read: its queues stay within the bound.
        limit = sfu.ctx.settings.receive_queue_frames
        assert max(queue_depths(server_pc)[receivers.index(consumed[0])]) <= limit
        assert participant.pipeline.counters.frames_in >= 100
        assert await metric(sfu, *rtp("released")) >= 100
    finally:
        await client.close()


async def test_ws_client_without_publish_grant_is_not_decoded(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine)
    listener = WsPeer(sfu.session, sfu.base_url, make_token("r", "eve", grants=("subscribe",)),
                      ToneTrack(500.0))
    try:
        assert (await listener.join())["type"] == "joined"
        await listener.publish()  # it sends its microphone anyway
        session = sfu.app[WS_HUB].rooms["r"]["eve"]
        await wait_for(lambda: session.pc is not None and session.media_connected)
        assert not sfu.ctx.registry.get("r") or not sfu.ctx.registry.get("r").participants
        before = await metric(sfu, *rtp("unread"))
        await asyncio.sleep(2.0)
        assert await metric(sfu, *rtp("unread")) - before >= 50
        assert all(d == (0, 0) for d in queue_depths(session.pc))
    finally:
        await listener.close()


async def test_ssrc_spray_keeps_routing_and_statistics_bounded(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    alice = await publisher(sfu, make_token, "r", "alice", speech_opus)
    try:
        participant = sfu.ctx.registry.get("r").participants["alice"]
        receiver = next(r for r in participant.pc.getReceivers()
                        if r.track is participant.pipeline.source)
        codecs = receiver._RTCRtpReceiver__codecs  # what the server negotiated
        await wait_for(lambda: codecs)  # filled when the receiver starts
        pt = next(p for p, c in codecs.items() if c.mimeType.lower() == "audio/opus")
        dtls = alice.pc.getSenders()[0].transport
        rng = random.Random(14)
        for i in range(300):  # a new SSRC every packet, through the real SRTP session
            packet = RtpPacket(payload_type=pt, sequence_number=i, timestamp=i * 960,
                               ssrc=rng.getrandbits(32), payload=b"\xf8\xff\xfe")
            await dtls._send_rtp(packet.serialize())
            if i % 50 == 0:
                await asyncio.sleep(0.02)
        await wait_for(lambda: receiver._handle_rtp_packet.rejected >= 250)
        router = receiver.transport._rtp_router
        assert len(router.ssrc_table) <= MAX_SSRCS + 1, len(router.ssrc_table)
        assert len(receiver._RTCRtpReceiver__remote_streams) <= MAX_SSRCS
        assert await metric(sfu, *rtp("ssrc_rejected")) >= 250
        # alice's own audio still flows
        frames = participant.pipeline.counters.frames_in
        await wait_for(lambda: participant.pipeline.counters.frames_in >= frames + 25)
    finally:
        await alice.close()


async def test_nack_flood_gets_a_bounded_number_of_retransmissions(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    alice = await publisher(sfu, make_token, "r", "alice", speech_opus)
    bob = Client(sfu, make_token("r", "bob"))
    try:
        assert await bob.subscribe("r", "alice") == 201
        await wait_for(lambda: len(bob.received) >= 25)
        receiver = bob.pc.getReceivers()[0]
        streams = receiver._RTCRtpReceiver__remote_streams
        media_ssrc, stats = next(iter(streams.items()))
        dtls = receiver.transport
        handled_before = await metric(sfu, "denoise_sfu_rtcp_packets_total", outcome="handled")

        async def arrivals_during(seconds: float, nacks: int) -> int:
            """Datagrams bob received in `seconds` (RTP, RTCP and retransmissions) while it
            sent `nacks` NACKs, each for the last 100 packets, spread over the first second."""
            start = dtls._RTCDtlsTransport__rx_packets
            for _ in range(nacks // 5):
                top = stats.max_seq
                nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=media_ssrc,
                                       lost=[(top - i) & 0xFFFF for i in range(100, 0, -1)])
                for _ in range(5):
                    await dtls._send_rtp(bytes(nack))
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(0.0, seconds - 1.0))
            return dtls._RTCDtlsTransport__rx_packets - start

        quiet = await arrivals_during(3.0, nacks=0)
        flooded = await arrivals_during(3.0, nacks=50)  # asks for 5,000 retransmissions
        # Unbounded, aiortc retransmits every one it still has (~5,000). Bounded: at most 100
        # a second plus a burst of 200 (~500 in 3 s) on top of the stream itself.
        assert flooded - quiet <= 3 * 100 + 200 + 60, (quiet, flooded)
        dropped = (await metric(sfu, "denoise_sfu_rtcp_packets_total", outcome="nack_limited")
                   + await metric(sfu, "denoise_sfu_rtcp_packets_total",
                                  outcome="rate_limited"))
        assert dropped >= 40, dropped  # of the 50 NACKs
        assert await metric(sfu, "denoise_sfu_rtcp_packets_total",
                            outcome="handled") > handled_before
        # bob still hears alice
        heard = len(bob.received)
        await wait_for(lambda: len(bob.received) >= heard + 25)
    finally:
        await bob.close()
        await alice.close()


async def test_late_packets_are_exported(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    alice = Client(sfu, make_token("r", "alice"))
    held: list[bytes] = []
    reordered: list[int] = []
    try:
        assert await alice.publish("r", speech_opus, mode="on") == 201
        # A reordering network: every 5th RTP packet of alice arrives after the one behind it.
        # (Duplicates would not do: SRTP's replay check drops them before RTP is parsed.)
        dtls = alice.pc.getSenders()[0].transport
        send = dtls._send_rtp
        count = 0

        async def reorder(data: bytes) -> None:
            nonlocal count
            if 192 <= data[1] <= 223:  # RTCP packet types: untouched
                await send(data)
                return
            count += 1
            if count % 5 == 0:
                held.append(data)
                return
            await send(data)
            while held:
                await send(held.pop())
                reordered.append(1)

        dtls._send_rtp = reorder
        late_before = await metric(sfu, *rtp("late"))
        released_before = await metric(sfu, *rtp("released"))
        await wait_for(lambda: len(reordered) >= 40, timeout=30)
        await asyncio.sleep(0.3)
        late = await metric(sfu, *rtp("late")) - late_before
        released = await metric(sfu, *rtp("released")) - released_before
        assert late >= 38 and released >= 150, (late, released, len(reordered))
        # The late packets never reached the pipeline (one lost packet each, concealed).
        pipeline = sfu.ctx.registry.get("r").participants["alice"].pipeline
        assert pipeline.counters.frames_late == 0
        assert await metric(sfu, *rtp("missing")) >= 38
    finally:
        await alice.close()


async def test_rtcp_bye_from_a_publisher_removes_it_and_tells_it(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine)
    registry = sfu.ctx.registry
    ada = WsPeer(sfu.session, sfu.base_url, make_token("r", "ada"), ToneTrack(300.0))
    try:
        assert (await ada.join())["type"] == "joined"
        await ada.publish()
        participant = registry.get("r").participants["ada"]
        await wait_for(lambda: participant.pipeline.counters.frames_in >= 25)
        assert gain_engine.live_streams == 1
        sender = ada.pc.getSenders()[0]
        await sender.transport._send_rtp(bytes(RtcpByePacket(sources=[sender._ssrc])))
        # aiortc stops decoding that track for good: the participant must not stay, silent.
        bye = await ada.wait_message(lambda m: m["type"] == "bye", timeout=10)
        assert bye["reason"] == "media_ended"
        closed = await ada.wait_message(lambda m: m["type"] == "_closed", timeout=5)
        assert closed["code"] == 4500
        assert registry.get("r") is None
        await wait_for(lambda: gain_engine.live_streams == 0)
        assert await metric(sfu, "denoise_sfu_media_events_total", event="track_ended") == 1
    finally:
        await ada.close()


async def test_offer_with_too_many_media_sections_is_refused(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine)
    baseline = udp_sockets()
    pc = RTCPeerConnection()
    for i in range(MAX_MEDIA_SECTIONS + 1):
        pc.addTrack(ToneTrack(300.0 + 10 * i))
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    try:
        async with sfu.session.post(sfu.url("/whip/r"), data=sdp, headers={
                "Authorization": f"Bearer {make_token('r', 'many')}",
                "Content-Type": "application/sdp"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "bad_sdp"
        ws = WsPeer(sfu.session, sfu.base_url, make_token("r", "many"))
        assert (await ws.join())["type"] == "joined"
        await ws.send({"type": "offer", "sdp": sdp})
        err = await ws.wait_message(lambda m: m["type"] == "error")
        assert err["code"] == "bad_sdp"
        assert sfu.app[WS_HUB].rooms["r"]["many"].pc is None
        await ws.close()
    finally:
        await pc.close()
    assert sfu.ctx.registry.get("r") is None
    await wait_for(lambda: udp_sockets() <= baseline)


# -- bounded queues, as units ----------------------------------------------------------------

async def test_drop_oldest_queues_keep_the_newest_and_count() -> None:
    drops: list[int] = []
    frames = DropOldestQueue(3, lambda: drops.append(1))
    for i in range(10):
        await frames.put(i)  # what aiortc's decoder thread schedules: never waits
    assert frames.qsize() == 3 and [frames.get_nowait() for _ in range(3)] == [7, 8, 9]
    assert frames.dropped == 7 and len(drops) == 7
    packets = DropOldestPacketQueue(2, lambda: drops.append(1))
    for i in range(5):
        packets.put(i)
    packets.put(None)  # aiortc's stop sentinel always gets in, and is never dropped
    packets.put(99)
    assert [packets.get_nowait() for _ in range(packets.qsize())] == [None, 99]
    assert packets.dropped == 5


def test_token_bucket_allows_its_rate_and_a_burst() -> None:
    bucket = TokenBucket(100.0)
    taken = sum(bucket.take() for _ in range(1000))
    assert 200 <= taken <= 210, taken  # the burst (twice the rate), plus what the loop took
    assert not bucket.take(50)


# -- item 4: the media-connect deadline ------------------------------------------------------

def without_candidates(sdp: str) -> str:
    """An offer whose ICE can never complete: no candidates and no end-of-candidates (a
    trickle client that never trickles)."""
    lines = [line for line in sdp.splitlines()
             if not line.startswith(("a=candidate", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


async def test_ws_session_whose_media_never_connects_is_ended(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine, connect_timeout=2.0)
    hub, registry = sfu.app[WS_HUB], sfu.ctx.registry
    ghost = WsPeer(sfu.session, sfu.base_url, make_token("r", "ghost"))
    idle = WsPeer(sfu.session, sfu.base_url, make_token("r", "idle"))
    client_pc = RTCPeerConnection()
    try:
        assert (await ghost.join())["type"] == "joined"
        client_pc.addTrack(ToneTrack(440.0))
        await client_pc.setLocalDescription(await client_pc.createOffer())
        await ghost.send({"type": "offer", "sdp": without_candidates(
            client_pc.localDescription.sdp)})
        await ghost.wait_message(lambda m: m["type"] == "answer")
        assert (await idle.join())["type"] == "joined"  # joins, never even offers
        session = hub.rooms["r"]["ghost"]
        server_pc = session.pc
        assert "ghost" in registry.get("r").participants
        assert gain_engine.live_streams == 1
        before = await metric(sfu, "denoise_sfu_peer_failures_total", reason="timeout")

        for peer in (ghost, idle):
            bye = await peer.wait_message(lambda m: m["type"] == "bye", timeout=10)
            assert bye["reason"] == "connect_timeout"
            closed = await peer.wait_message(lambda m: m["type"] == "_closed", timeout=5)
            assert closed["code"] == 4408
        # Everything it held is released: participant, engine slot, peer connection.
        assert registry.get("r") is None
        assert "r" not in hub.rooms
        await wait_for(lambda: gain_engine.live_streams == 0)
        assert server_pc.connectionState == "closed"
        after = await metric(sfu, "denoise_sfu_peer_failures_total", reason="timeout")
        assert after - before == 2
    finally:
        await client_pc.close()
        await ghost.close()
        await idle.close()


async def test_whip_and_whep_sessions_that_never_connect_are_released(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    sfu = await sfu_factory(gain_engine, connect_timeout=2.0)
    registry = sfu.ctx.registry
    alice = await publisher(sfu, make_token, "r", "alice", speech_opus)
    pcs = [RTCPeerConnection(), RTCPeerConnection()]
    try:
        before = await metric(sfu, "denoise_sfu_peer_failures_total", reason="timeout")
        pcs[0].addTrack(ToneTrack(440.0))
        pcs[1].addTransceiver("audio", direction="recvonly")
        sessions = []
        for pc, path, identity in ((pcs[0], "/whip/r", "ghost"),
                                   (pcs[1], "/whep/r/alice", "shade")):
            await pc.setLocalDescription(await pc.createOffer())
            async with sfu.session.post(
                    sfu.url(path), data=without_candidates(pc.localDescription.sdp),
                    headers={"Authorization": f"Bearer {make_token('r', identity)}",
                             "Content-Type": "application/sdp"}) as resp:
                assert resp.status == 201, await resp.text()
                sessions.append(resp.headers["Location"].rsplit("/", 1)[1])
        ghost, shade = (registry.find(s) for s in sessions)
        server_pcs = [ghost.pc, shade.pc.pc]
        assert gain_engine.live_streams == 2
        await wait_for(lambda: all(registry.find(s) is None for s in sessions), timeout=10)
        await wait_for(lambda: all(p.connectionState == "closed" for p in server_pcs))
        await wait_for(lambda: gain_engine.live_streams == 1)  # alice's alone
        # (counted when the deadline's leave returns, a moment after the peer is closed)
        for _ in range(50):
            after = await metric(sfu, "denoise_sfu_peer_failures_total", reason="timeout")
            if after - before >= 2:
                break
            await asyncio.sleep(0.1)
        assert after - before == 2
        assert set(registry.get("r").participants) == {"alice"}
    finally:
        for pc in pcs:
            await pc.close()
        await alice.close()


# -- item 6: re-join during the first offer --------------------------------------------------

async def test_rejoin_during_first_offer_leaks_no_udp_socket(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine)
    hub, registry = sfu.app[WS_HUB], sfu.ctx.registry
    baseline = udp_sockets()
    token = make_token("r", "ada")
    for _ in range(4):
        first = WsPeer(sfu.session, sfu.base_url, token, ToneTrack(300.0))
        assert (await first.join())["type"] == "joined"
        pc = first.pc = RTCPeerConnection()
        pc.addTrack(ToneTrack(300.0))
        await pc.setLocalDescription(await pc.createOffer())
        # The offer and, at once, the same identity joining again (a reload).
        await first.send({"type": "offer", "sdp": pc.localDescription.sdp})
        second = WsPeer(sfu.session, sfu.base_url, token)
        assert (await second.join())["type"] == "joined"
        await first.wait_message(lambda m: m["type"] == "_closed")
        await second.close()
        await first.close()
        await wait_for(lambda: not hub.rooms and registry.get("r") is None)
    await wait_for(lambda: gain_engine.live_streams == 0)
    # aiortc closes sockets a moment after pc.close(); give it time, then count.
    for _ in range(50):
        if udp_sockets() <= baseline:
            break
        await asyncio.sleep(0.1)
    assert udp_sockets() == baseline, (udp_sockets(), baseline)


# -- item 8b: a pipeline task that dies ------------------------------------------------------

def level(x: np.ndarray) -> float:
    """Median RMS of 20 ms blocks (robust to a few concealed blocks on a busy machine)."""
    blocks = x[: x.size // 960 * 960].reshape(-1, 960)
    return float(np.median(np.sqrt(np.mean(blocks**2, axis=1)))) if blocks.size else 0.0


async def test_dead_pipeline_restarts_in_pass_through_then_removes_and_tells(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    registry = sfu.ctx.registry
    ada = WsPeer(sfu.session, sfu.base_url, make_token("r", "ada"), ToneTrack(300.0))
    bob = WsPeer(sfu.session, sfu.base_url, make_token("r", "bob", grants=("subscribe",)))
    try:
        assert (await ada.join())["type"] == "joined"
        await ada.publish()
        assert (await bob.join())["type"] == "joined"
        await bob.publish()
        await bob.wait_participants(lambda ps: "ada" in ps and ps["ada"]["mid"] is not None)
        await wait_for(lambda: bob.received("ada").size >= 48_000, timeout=30)
        pipeline = registry.get("r").participants["ada"].pipeline
        inbound = pipeline.source  # the real receive track of ada's peer connection
        mark = bob.mark()
        await asyncio.sleep(1.0)
        denoised = level(bob.received_since("ada", mark))

        # A frame the pipeline cannot handle arrives on the real receive track: its task dies.
        inbound._queue.put_nowait(av.VideoFrame(16, 16, "yuv420p"))
        await wait_for(lambda: pipeline.restarts == 1)
        assert await metric(sfu, "denoise_sfu_pipeline_failures_total",
                            action="restarted") == 1
        # Restarted in pass-through: bob still hears ada, now at the original level (the
        # GainModel halves what it denoises), and the hops are counted as degraded.
        assert not pipeline.done and pipeline.degraded
        await asyncio.sleep(0.5)
        mark = bob.mark()
        await asyncio.sleep(1.0)
        raw = level(bob.received_since("ada", mark))
        assert raw > 1.5 * denoised > 0, (raw, denoised)
        assert await metric(sfu, "denoise_sfu_media_events_total", event="hop_degraded") >= 50
        assert "ada" in registry.get("r").participants and not ada.errors

        # It dies again: the participant is removed, its client told, its engine slot freed.
        inbound._queue.put_nowait(av.VideoFrame(16, 16, "yuv420p"))
        bye = await ada.wait_message(lambda m: m["type"] == "bye", timeout=10)
        assert bye["reason"] == "media_failed"
        closed = await ada.wait_message(lambda m: m["type"] == "_closed", timeout=5)
        assert closed["code"] == 4500
        assert await metric(sfu, "denoise_sfu_pipeline_failures_total", action="removed") == 1
        await bob.wait_participants(lambda ps: "ada" not in ps)
        assert registry.get("r") is None or "ada" not in registry.get("r").participants
        await wait_for(lambda: gain_engine.live_streams == 0)
        assert not bob.errors
    finally:
        await ada.close()
        await bob.close()


async def test_garbage_datagrams_at_the_media_port_do_not_end_the_call(
        sfu_factory: Any, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    """Failed before: aioice passed every non-STUN datagram, from any address, to DTLS, whose
    transport ended the whole peer connection on an empty datagram (IndexError) or on an
    SRTP-range one over 1,500 bytes (libsrtp's ValueError); found by `bench fuzz`."""
    sfu = await sfu_factory(gain_engine)
    alice = Client(sfu, make_token("r", "alice"))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert await alice.publish("r", speech_opus, mode="on") == 201
        participant = sfu.ctx.registry.get("r").participants["alice"]
        server_pc = participant.pc
        ports = [(host, int(port)) for host, port in re.findall(
            r"a=candidate:\S+ 1 udp \d+ (\d+\.\d+\.\d+\.\d+) (\d+) typ host",
            alice.pc.remoteDescription.sdp)]
        assert ports
        # What a fuzzer sends: empty, too long in the SRTP range, STUN that does not parse,
        # short junk in the SRTP and DTLS ranges; from a stranger's socket and from alice's
        # own (the address ICE validated).
        junk = [b"", b"\x80" * 1600, b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"\x00" * 12
                + b"\x00\x24\x00\x02\x00\x00\x00\x00", b"\x80\x60" + bytes(10), b"\x16\xfe\xfd"]
        own = next(p for p in alice.pc.getTransceivers()[0].sender.transport.transport
                   .iceGatherer._connection._protocols)
        hops_before = participant.pipeline.counters.hops_in
        for _ in range(3):
            for data in junk:
                for addr in ports:
                    stranger.sendto(data, addr)
                    own.transport.sendto(data, addr)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert server_pc.connectionState == "connected"
        assert "alice" in sfu.ctx.registry.get("r").participants
        await wait_for(lambda: participant.pipeline.counters.hops_in > hops_before + 50,
                       timeout=10)
        dropped = "denoise_sfu_udp_datagrams_dropped_total"
        assert await metric(sfu, dropped, reason="size") >= 6
        assert await metric(sfu, dropped, reason="unknown_source") >= 6
        assert await metric(sfu, dropped, reason="malformed_stun") >= 3
    finally:
        stranger.close()
        await alice.close()
