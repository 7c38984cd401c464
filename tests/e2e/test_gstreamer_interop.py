"""A standard non-browser WebRTC stack against the SFU: GStreamer's webrtcbin (Debian's 1.22,
scripts/install-system-deps.sh) publishes real noisy speech over WHIP and subscribes to it over
WHEP with its default RSA certificate, so the server is the DTLS client against an RSA-keyed
DTLS server (what stock aiortc cannot do). What it hears must be the engine's output: the
known-answer GainModel halves the audio, so the subscriber hears the sent speech (its
envelope) 6 dB lower, every hop counted denoised.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
from cryptography.hazmat.primitives.asymmetric import rsa

from denoiser.engine import Engine
from support.sample_audio import noise_48k, speech_48k
from support.sfu import SfuFactory

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(150)]

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("gst_client.py")
RATE = 48_000


def missing(reason: str) -> None:
    """Skip, naming the fix; in CI (where scripts/install-system-deps.sh ran) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def gstreamer_or_skip() -> None:
    """Skip, naming the fix, unless the system Python has GStreamer's webrtcbin."""
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', "
             "'1.0'); from gi.repository import Gst; Gst.init(None); "
             "assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('opusenc')")
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("gst-inspect-1.0") is None:
        missing("GStreamer is not installed (scripts/install-system-deps.sh)")
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        missing("GStreamer webrtcbin/python3-gi missing (scripts/install-system-deps.sh): "
                    + done.stderr.decode()[-300:])


def envelope(x: np.ndarray, block: int = 480) -> np.ndarray:
    n = x.size // block
    return np.sqrt(np.mean(x[: n * block].reshape(n, block) ** 2, axis=1) + 1e-12)


def best_alignment(heard: np.ndarray, sent: np.ndarray) -> tuple[int, float]:
    """(lag, correlation) of the log envelopes (10 ms blocks) at the best lag: heard block
    `i + lag` is sent block `i`. The lag is negative when the subscriber joined after the
    file started, positive when it heard silence first; overlaps under 4 s do not count."""
    h, s = np.log(envelope(heard)), np.log(envelope(sent))
    best = (0, -1.0)
    for lag in range(-s.size + 400, h.size - 400):
        a, b = max(0, lag), max(0, -lag)
        n = min(h.size - a, s.size - b)
        corr = float(np.corrcoef(h[a:a + n], s[b:b + n])[0, 1])
        if corr > best[1]:
            best = (lag, corr)
    return best


async def test_gstreamer_webrtcbin_publishes_and_subscribes(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str],
        tmp_path: Path) -> None:
    gstreamer_or_skip()
    speech = speech_48k()
    noise = np.resize(noise_48k(), 2 * RATE + speech.size + RATE)
    clean = np.concatenate([np.zeros(2 * RATE), speech, np.zeros(RATE)])
    gain = np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10 ** (15 / 20))
    sent = (clean + gain * noise).astype(np.float32)
    sent *= 0.3 / np.abs(sent).max()
    wav, raw = tmp_path / "noisy.wav", tmp_path / "heard.raw"
    soundfile.write(wav, sent, RATE, subtype="PCM_16")

    # Generous engine deadlines: what is tested is the path, not this shared box's speed.
    sfu = await sfu_factory(gain_engine, hop_deadline=2.0, latency_budget=4.0)
    peers: dict[str, object] = {}
    registry = sfu.ctx.registry
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(CLIENT), sfu.base_url, "gst", make_token("gst", "pub"),
        make_token("gst", "sub"), str(wav), str(raw),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def note_publisher() -> None:  # while it is live: its peer's DTLS certificate
        while proc.returncode is None:
            room = registry.get("gst")
            participant = room.participants.get("pub") if room else None
            if participant is not None and "stream" not in peers:
                transport = participant.pc.getTransceivers()[0].receiver.transport
                if transport.state == "connected":
                    peers["certificate"] = transport._ssl.get_peer_certificate(
                        as_cryptography=True)
                    peers["role"] = transport._role
                    peers["stream"] = participant.pipeline.stream
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(note_publisher())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await watcher
    assert proc.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    for name, path in (("whip", "/whip/gst/"), ("whep", "/whep/gst/pub/")):
        session = report[name]
        assert session["status"] == 201, (name, session, err.decode()[-2000:])
        assert session["content_type"] == "application/sdp", session
        assert session["location"].startswith(path) and session["etag"], session
        assert session["answer_setup"] == ["a=setup:active"], session  # server: DTLS client
        assert session["final_state"] == "connected", (name, session, err.decode()[-2000:])
        assert session["delete"] == 200, session

    # The publisher's certificate was GStreamer's default RSA one; the server was DTLS client.
    assert isinstance(peers["certificate"].public_key(), rsa.RSAPublicKey)
    assert peers["role"] == "client"
    stream = peers["stream"]
    assert stream.counters["denoised"] > 300 and stream.passed_through == 0, stream.counters

    heard = np.fromfile(raw, dtype="<i2").astype(np.float32) / 32768
    assert heard.size > 4 * RATE, f"heard only {heard.size / RATE:.2f} s"
    lag, corr = best_alignment(heard, sent)
    assert corr > 0.8, f"what was heard does not follow the sent speech (r={corr:.2f})"
    # the speech as heard and as sent, over the part both hold
    start = max(2 * RATE, -lag * 480)
    stop = min(2 * RATE + speech.size, heard.size - lag * 480)
    assert stop - start > 3 * RATE, (lag, start, stop)
    got = heard[start + lag * 480:stop + lag * 480]
    level_db = 20 * np.log10(np.sqrt(np.mean(got**2)) / np.sqrt(np.mean(sent[start:stop] ** 2)))
    print(f"gstreamer interop: lag {lag * 10} ms, envelope r={corr:.3f}, level {level_db:+.1f} dB,"
          f" counters {stream.counters}")
    assert -8.5 < level_db < -3.5, f"heard at {level_db:+.1f} dB, the GainModel gives -6 dB"
