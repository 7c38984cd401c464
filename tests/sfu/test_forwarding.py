"""Mode off forwards the publisher's own Opus payloads, and the fan-out writes straight to each
subscriber's RTP stream: real aiortc peers over the machine's interface, no mocks.

What is observed (never replaced): the plain RTP the publisher's DTLS transport is asked to
protect, and the RTP / RTCP each listener's receiver is handed after SRTP.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtcpSrPacket, RtpPacket, is_rtcp

from sfu.bench.harness import ToneTrack
from sfu.media.fanout import PacketTrack
from sfu.media.forward import ForwardGate, Payload, opus_packet_samples
from sfu.media.pipeline import SpeakerPipeline
from sfu.media.receiver import install_for_track
from sfu.media.switch import SwitchTrack
from sfu.metrics import Metrics
from support.peers import connect

pytestmark = pytest.mark.timeout(90)


class DelayStream:
    """DenoisedStream stand-in: one hop of delay; mode on halves the level, off keeps it."""

    latency_samples = 480

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.counters = {"denoised": 0, "mode_off": 0}
        self._previous = np.zeros(480, dtype=np.float32)

    async def process_hops(self, raw: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0)
        gain = 1.0 if self.mode == "off" else 0.5
        delayed = np.concatenate([self._previous, raw * gain])
        self._previous = delayed[-480:]
        self.counters["mode_off" if self.mode == "off" else "denoised"] += raw.size // 480
        return delayed[:raw.size]


class Observed:
    """What one listener's receiver got: RTP packets and sender reports, after SRTP."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.rtp: list[RtpPacket] = []
        self.reports: list[RtcpSrPacket] = []
        self.receiver = receiver
        rtp, rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            self.rtp.append(packet)
            await rtp(packet, arrival_time_ms=arrival_time_ms)

        async def on_rtcp(packet: object) -> None:
            if isinstance(packet, RtcpSrPacket):
                self.reports.append(packet)
            await rtcp(packet)

        receiver._handle_rtp_packet = on_rtp  # type: ignore[method-assign]
        receiver._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign]


class Call:
    """A publisher, the SFU's inbound peer, a pipeline, and listeners on their own peers."""

    def __init__(self) -> None:
        self.peers: list[RTCPeerConnection] = []
        self.sent: list[RtpPacket] = []
        self.listeners: list[Observed] = []
        self.tracks: list[MediaStreamTrack] = []
        self.senders: list[RTCRtpSender] = []
        self.pipeline: SpeakerPipeline | None = None
        self.buffer = None

    async def start(self, mode: str, subscribers: int, switch_track: bool = False) -> None:
        publisher, sfu_in = RTCPeerConnection(), RTCPeerConnection()
        self.peers += [publisher, sfu_in]
        publisher.addTrack(ToneTrack(437.3, level=0.5))  # no period of whole frames
        inbound: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

        @sfu_in.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.buffer = install_for_track(sfu_in, track)
            inbound.set_result(track)

        await connect(publisher, sfu_in)
        transport = publisher.getTransceivers()[0].sender.transport
        send = transport._send_rtp

        async def record(data: bytes) -> None:
            if not is_rtcp(data):
                self.sent.append(RtpPacket.parse(data))
            await send(data)

        transport._send_rtp = record  # type: ignore[method-assign]
        source = await asyncio.wait_for(inbound, 10)
        self.pipeline = SpeakerPipeline(source, DelayStream(mode), Metrics())
        self.pipeline.start()
        for _ in range(subscribers):
            sfu_out, listener = RTCPeerConnection(), RTCPeerConnection()
            self.peers += [sfu_out, listener]
            track: MediaStreamTrack = self.pipeline.subscribe()
            if switch_track:  # as WHEP and the room socket do
                switch = SwitchTrack()
                switch.set_source(track)
                sfu_out.addTrack(switch)
                self.tracks.append(switch)
            else:
                sfu_out.addTrack(track)
                self.tracks.append(track)
            self.senders.append(sfu_out.getSenders()[0])

            def observe(track: MediaStreamTrack, listener: RTCPeerConnection = listener) -> None:
                # observe from the very first packet
                receiver = next(r for r in listener.getReceivers() if r.track is track)
                self.listeners.append(Observed(receiver))

            listener.on("track", observe)
            await connect(sfu_out, listener)

    async def close(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.stop()
        await asyncio.gather(*(pc.close() for pc in self.peers))


def assert_one_stream(packets: list[RtpPacket]) -> None:
    """One SSRC, sequence numbers +1, timestamps advancing by each packet's duration."""
    assert len({p.ssrc for p in packets}) == 1
    for before, after in itertools.pairwise(packets):
        assert after.sequence_number == (before.sequence_number + 1) & 0xFFFF, (before, after)
        step = (after.timestamp - before.timestamp) & 0xFFFFFFFF
        assert step == opus_packet_samples(before.payload) == 960, (before, after)


async def test_mode_off_forwards_payloads_bit_exact_same_bytes_to_every_subscriber() -> None:
    call = Call()
    try:
        await call.start("off", subscribers=3)
        await asyncio.sleep(2.5)  # > 1 s: the senders' RTCP tasks send reports
        assert call.pipeline is not None
        counters = call.pipeline.counters
        stats = [await o.receiver.getStats() for o in call.listeners]
        # the listeners answer the reports (RR with LSR/DLSR): each sender gets a round-trip
        # time once a receiver report refers to its latest sender report
        rtts: list[float | None] = []
        for _ in range(80):
            rtts = [next((s.roundTripTime for s in (await sender.getStats()).values()
                          if s.type == "remote-inbound-rtp"), None) for sender in call.senders]
            if None not in rtts:
                break
            await asyncio.sleep(0.1)
        directs = [getattr(t, "direct", None) for t in call.tracks]
    finally:
        await call.close()

    # every listener's track was written directly (no sender task per packet)
    assert all(isinstance(t, PacketTrack) and t.packets_sent > 50 for t in call.tracks)
    assert all(d is not None and d.packets_sent > 50 and d.packets_relayed == 0
               for d in directs), "every packet straight to sendto, no task each"
    sent = [p.payload for p in call.sent]
    received = [[p.payload for p in o.rtp] for o in call.listeners]
    assert counters.packets_forwarded > 80
    published = set(sent)
    for payloads in received:
        assert len(payloads) > 80
        # after the first frame or two (decoded while the stream crossfaded onto its raw
        # path), what each listener got is the publisher's payloads, byte for byte, in order
        first = next(i for i, payload in enumerate(payloads) if payload in published)
        assert first <= 3
        forwarded = payloads[first:]
        assert any(sent[k:k + len(forwarded)] == forwarded for k in range(len(sent)))
    # the same bytes to every subscriber: the last to join got a stretch of what the others
    # got (its last packets may still have been in flight)
    last = received[-1][3:-3]
    assert len(last) > 50
    for payloads in received[:-1]:
        assert any(payloads[k:k + len(last)] == last for k in range(len(payloads)))
    for observed, report in zip(call.listeners, stats, strict=True):
        assert_one_stream(observed.rtp)
        # the mid and audio-level header extensions are on every packet (the publisher's
        # own level while forwarding)
        assert all(p.extensions.mid is not None for p in observed.rtp)
        assert all(p.extensions.audio_level is not None for p in observed.rtp)
        assert observed.reports, "no RTCP sender report reached the listener"
        ssrc = observed.rtp[0].ssrc
        sr = observed.reports[-1]
        assert sr.ssrc == ssrc
        seen = {p.timestamp for p in observed.rtp}
        assert sr.sender_info.rtp_timestamp in seen
        index = next(i for i, p in enumerate(observed.rtp)
                     if p.timestamp == sr.sender_info.rtp_timestamp)
        # packet and octet counts as of that packet (one stream, counted from its first)
        assert sr.sender_info.packet_count == index + 1
        assert sr.sender_info.octet_count == sum(len(p.payload) for p in observed.rtp[:index + 1])
        remote = [s for s in report.values() if s.type == "remote-outbound-rtp"]
        assert remote and remote[0].packetsSent == sr.sender_info.packet_count
        assert abs(remote[0].remoteTimestamp.timestamp() - time.time()) < 5  # a real NTP time
    assert None not in rtts, rtts


@pytest.mark.parametrize("switch_track", [False, True], ids=["track", "switch-track"])
async def test_mode_switch_on_off_on_keeps_one_continuous_stream(switch_track: bool) -> None:
    call = Call()
    try:
        await call.start("on", subscribers=2, switch_track=switch_track)
        assert call.pipeline is not None
        await asyncio.sleep(1.2)
        call.pipeline.mode = "off"
        await asyncio.sleep(1.2)
        call.pipeline.mode = "on"
        await asyncio.sleep(1.2)
        counters = call.pipeline.counters
        jb = call.buffer
        direct = [getattr(t, "direct", None) is not None for t in call.tracks]
        failures = [t.direct.packets_failed for t in call.tracks
                    if getattr(t, "direct", None) is not None]
        await call.pipeline.stop()
        released = jb.packets_released if jb is not None else 0
        await asyncio.sleep(0.2)
    finally:
        await call.close()

    sent = {p.payload for p in call.sent}
    for observed in call.listeners:
        packets = observed.rtp
        assert_one_stream(packets)
        kinds = "".join("f" if p.payload in sent else "e" for p in packets)
        # re-encoded, then forwarded, then re-encoded again: exactly two switches
        runs = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
        assert runs == ["e", "f", "e"], kinds
        assert kinds.count("f") > 40 and kinds.count("e") > 80
    assert all(direct)  # written directly by the publisher's task, through a SwitchTrack too
    # nothing failed once the senders were bound (a sender whose DTLS is slow to connect
    # drops its oldest queued packets before: counted, and only then)
    assert all(failed == 0 for failed in failures)
    # every packet that came in went out once: forwarded, or decoded and encoded; the frames
    # decoded while forwarding (refreshing the delay line) are counted as replaced
    assert jb is not None
    taken = counters.frames_in + counters.packets_forwarded - counters.frames_replaced
    assert 0 <= released - taken <= 3  # the rest were in the decoder at the stop
    assert counters.packets_out == counters.frames_in - counters.frames_replaced
    assert counters.hops_out == 2 * (counters.packets_out + counters.frames_replaced)
    assert counters.frames_replaced == 1  # one hop of delay: one frame of refresh
    # and every hop has its outcome in the stream's counters (the exported hop metrics),
    # forwarded ones as mode_off
    outcomes = call.pipeline.stream.counters
    assert sum(outcomes.values()) == counters.hops_out + counters.hops_forwarded
    assert outcomes["mode_off"] >= counters.hops_forwarded > 80
    assert counters.publisher_pauses == 0  # the forwarded stretch is not a pause


def test_gate_routes_and_covers() -> None:
    gate = ForwardGate(latency_samples=960)

    def route(ts: int, mode: str) -> tuple[list[int], bool]:
        forwarded, decode = gate.route(Payload(ts, 960, bytes([ts % 251]), None), mode)
        return [p.timestamp for p in forwarded], decode

    assert route(0, "on") == ([], True)
    gate.frame_processed("on", 960)
    assert route(960, "off") == ([], True)  # crossfades through the stream
    assert route(1920, "off") == ([], True)  # that frame is not processed yet: decode
    gate.frame_processed("off", 1920)
    # frame 1920 is still in the pipeline: it is forwarded first, so that no re-encoded
    # packet follows a forwarded one (and its frame is not encoded)
    assert route(2880, "off") == ([1920, 2880], False)
    assert route(3840, "off") == ([3840], False)
    assert route(4800, "on") == ([4800], True)  # refresh: one frame of delay line
    assert route(5760, "on") == ([], True)
    assert gate.covers(1920) and gate.covers(4800) and not gate.covers(960)
    assert not gate.covers(5760)
    assert gate.forwarded_through(1920, 5760) and not gate.forwarded_through(960, 2880)


def test_opus_packet_samples() -> None:
    assert opus_packet_samples(bytes([0xFC, 0])) == 960  # CELT FB 20 ms, one frame
    assert opus_packet_samples(bytes([0x78])) == 960  # SILK WB 20 ms
    assert opus_packet_samples(bytes([0xFD])) == 1920  # two 20 ms frames
    assert opus_packet_samples(bytes([0xF3, 0x03])) == 1440  # code 3: three 10 ms CELT frames
    assert opus_packet_samples(b"") == 0
