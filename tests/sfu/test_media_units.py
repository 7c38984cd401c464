"""Encoder, fan-out and the low-latency jitter buffer, each on its own."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from sfu.media.encoder import FRAME_SIZE, OpusPacketEncoder
from sfu.media.fanout import FanOut
from sfu.media.receiver import ImmediateAudioJitterBuffer

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2,
                             payloadType=111)


def _tone(n_frames: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(n_frames * FRAME_SIZE) / 48_000
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_encoder_packets_decode_back_with_monotonic_pts() -> None:
    enc = OpusPacketEncoder()
    signal = _tone(50)
    packets = []
    for i in range(50):
        packets += enc.encode(signal[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
    assert len(packets) == 50
    assert [p.pts for p in packets] == [i * FRAME_SIZE for i in range(50)]
    assert all(p.time_base == fractions.Fraction(1, 48_000) for p in packets)
    assert max(len(bytes(p)) for p in packets) < 200  # about 32 kbit/s, not aiortc's 96
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout, dec.format = 48_000, "mono", "s16"
    out = np.concatenate([f.to_ndarray().reshape(-1) for p in packets
                          for f in dec.decode(av.Packet(bytes(p)))]) / 32768.0
    # the decoded tone has the right level (Opus delays it by its pre-skip; compare RMS)
    assert abs(np.sqrt(np.mean(out[4800:] ** 2)) - 0.4 / np.sqrt(2)) < 0.05
    # aiortc's sender packs our packets as they are, with our pts as the RTP timestamp
    payloads, timestamp = get_encoder(OPUS).pack(packets[7])
    assert payloads == [bytes(packets[7])] and timestamp == 7 * FRAME_SIZE


def test_encoder_skip_leaves_a_gap_in_pts_and_rejects_bad_frames() -> None:
    enc = OpusPacketEncoder()
    (first,) = enc.encode(np.zeros(FRAME_SIZE, dtype=np.float32))
    enc.skip(48_000)
    (second,) = enc.encode(np.zeros(FRAME_SIZE, dtype=np.float32))
    assert second.pts - first.pts == FRAME_SIZE + 48_000
    with pytest.raises(ValueError, match="960"):
        enc.encode(np.zeros(480, dtype=np.float32))
    with pytest.raises(ValueError):
        enc.skip(-1)


async def test_fanout_same_objects_and_slow_subscriber_does_not_stall() -> None:
    drops: list[int] = []
    fan = FanOut(max_queue=4, on_drop=drops.append)
    fast_a, fast_b, slow = fan.subscribe(), fan.subscribe(), fan.subscribe()
    enc = OpusPacketEncoder()
    got_a, got_b = [], []

    async def reader(track, out) -> None:
        while True:
            try:
                out.append(await track.recv())
            except MediaStreamError:
                return

    readers = [asyncio.ensure_future(reader(fast_a, got_a)),
               asyncio.ensure_future(reader(fast_b, got_b))]
    sent = []
    for frame in np.split(_tone(30), 30):
        for packet in enc.encode(frame):
            sent.append(packet)
            fan.publish(packet)  # never awaits: a slow reader cannot hold the speaker
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(got_a) == len(got_b) == len(sent) == 30
    assert all(a is b is s for a, b, s in zip(got_a, got_b, sent, strict=True))
    # the slow subscriber kept only the newest 4 and counted the rest
    assert slow.queued == 4 and slow.packets_dropped == 26 and sum(drops) == 26
    assert [(await slow.recv()) is s for s in sent[-4:]] == [True] * 4
    fan.unsubscribe(fast_b)
    fan.publish(sent[0])
    await asyncio.sleep(0)
    assert len(got_a) == 31 and len(got_b) == 30
    fan.close()
    await asyncio.gather(*readers)
    with pytest.raises(MediaStreamError):
        await slow.recv()


def _rtp(seq: int, ts: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF,
                       timestamp=ts & 0xFFFFFFFF)
    packet._data = bytes([seq & 0xFF])  # what aiortc's depayload leaves for the decoder
    return packet


def test_immediate_jitter_buffer_releases_at_once_and_drops_late() -> None:
    jb = ImmediateAudioJitterBuffer()
    base_seq, base_ts = 65_530, 2**32 - 3 * 960  # both wrap during the test
    released = []
    order = [0, 1, 2, 4, 3, 5, 5, 6, 9, 10]  # 3 late, 5 duplicated, 7-8 lost
    for i in order:
        _, frame = jb.add(_rtp(base_seq + i, base_ts + i * 960))
        if frame is not None:
            released.append(frame.timestamp)
            assert jb.arrivals.pop(frame.timestamp) is not None
    assert released == [i * 960 for i in (0, 1, 2, 4, 5, 6, 9, 10)]
    assert jb.packets_late == 2 and jb.packets_missing == 3 and jb.packets_released == 8
    # a restarted sender (sequence far behind) carries on with monotonic timestamps
    _, frame = jb.add(_rtp(40_000, 5))  # 25540 behind the last one
    assert frame is not None and frame.timestamp == 11 * 960 and jb.restarts == 1
