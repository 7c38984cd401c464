"""`denoise-sfu bench e2e`: does the SFU really denoise? Real noisy speech goes in over WHIP,
what a WHEP subscriber hears comes out, and the two are compared with the clean speech.

One run (`run_clip`): a real aiortc publisher (`ClipTrack`: silence, then the clip on cue, then
silence, paced in real time, Opus-encoded by aiortc) posts to `/whip/{room}?mode=...`; a real
aiortc subscriber posts to `/whep/{room}/{publisher}` and records every decoded frame at its RTP
timestamp (`Recorder`). Once the subscriber hears the stream the clip is cued; when it has been
sent and heard, both leave with DELETE, and the server's own hop counters (`/metrics`:
`frames_denoised_total`, `frames_passed_through_total{reason}`) are read as the change over the
run. `sfu.bench.e2e_scoring` aligns and scores the audio.

The bench runs the server (the shipped model in a `LocalEngine`, default deadlines) and the
peers in this process, one run at a time, over clips x SNRs, prints each and the overall
figures, and ends with ONE JSON line. Everything shares this machine's cores, so on a busy
machine some hops pass through as `late`: that is counted and printed, not hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from sfu.auth import issue_token
from sfu.bench.e2e_scoring import SAMPLE_RATE, Clip, Measures, measure, mix_clip
from sfu.bench.harness import interface_address, wait_for

FRAME = 960  # 20 ms, what a browser sends
HOP_COUNTERS = ("denoised", "mode_off", "late", "engine_error", "dtmf", "call_progress", "tone",
                "music")
CONNECT_TIMEOUT_S = 15.0


# -- the peers ----------------------------------------------------------------------------------

class ClipTrack(MediaStreamTrack):
    """An audio track paced in real time: silence until `cue()`, then the clip once, then
    silence; `finished` is set once the clip and `post_roll` samples of silence have gone."""

    kind = "audio"

    def __init__(self, audio: np.ndarray, post_roll: int = SAMPLE_RATE // 2) -> None:
        super().__init__()
        pcm = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
        self._pcm = np.round(pcm * 32767).astype(np.int16)
        self._post_roll = post_roll
        self._pts = 0
        self._t0: float | None = None
        self._cued_at: int | None = None
        self.finished = asyncio.Event()

    def cue(self) -> None:
        """Start the clip at the next frame."""
        if self._cued_at is None:
            self._cued_at = self._pts

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._t0 = self._t0 or now
        delay = self._t0 + self._pts / SAMPLE_RATE - now
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = np.zeros(FRAME, dtype=np.int16)
        if self._cued_at is not None:
            pos = self._pts - self._cued_at
            part = self._pcm[pos:pos + FRAME]
            chunk[:part.size] = part
            if pos + FRAME >= self._pcm.size + self._post_roll:
                self.finished.set()
        # Both channels alike: aiortc encodes stereo, and a mono frame would be upmixed at
        # -3 dB by its resampler, a loss no browser's mono Opus has.
        frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate, frame.pts = SAMPLE_RATE, self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += FRAME
        return frame


class Recorder:
    """Every decoded frame of one received track, placed at its RTP timestamp (mono 48 kHz);
    a frame that never came (lost, or dropped by the jitter buffer) stays silence and is
    counted in `missing_samples`."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, np.ndarray]] = []
        self.arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.ensure_future(self._collect(track))

    async def _collect(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame) and frame.pts is not None
                assert frame.time_base is not None
                data = frame.to_ndarray().astype(np.float32) / 32768
                channels = len(frame.layout.channels)
                mono = data.mean(axis=0) if frame.format.is_planar else \
                    data.reshape(-1, channels).mean(axis=1)
                pts = round(frame.pts * frame.time_base * SAMPLE_RATE)
                self.frames.append((pts, mono))
                if len(self.frames) >= 10:
                    self.arrived.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def audio(self) -> tuple[np.ndarray, int]:
        """(the timeline from the first frame, samples missing inside it)."""
        if not self.frames:
            return np.zeros(0, dtype=np.float32), 0
        start = min(p for p, _ in self.frames)
        end = max(p + f.size for p, f in self.frames)
        out = np.zeros(end - start, dtype=np.float32)
        covered = np.zeros(end - start, dtype=bool)
        for pts, mono in self.frames:
            out[pts - start:pts - start + mono.size] = mono
            covered[pts - start:pts - start + mono.size] = True
        return out, int((~covered).sum())


class Server(Protocol):
    """A running SFU: the tests' `RunningSfu` and the bench's `LocalServer` both fit."""

    session: aiohttp.ClientSession

    def url(self, path: str) -> str: ...

    @property
    def ctx(self) -> Any: ...


@dataclass
class Peer:
    """One WHIP/WHEP client peer connection and its session URL."""

    server: Server
    token: str
    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    location: str | None = None

    async def post(self, path: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with self.server.session.post(
                self.server.url(path), data=self.pc.localDescription.sdp,
                headers={"Authorization": f"Bearer {self.token}",
                         "Content-Type": "application/sdp"}) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"POST {path} answered {resp.status}: {body}")
            self.location = resp.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        await wait_for(lambda: self.pc.connectionState == "connected", f"{path} to connect",
                       CONNECT_TIMEOUT_S)

    async def delete(self) -> None:
        if self.location is None:
            return
        location, self.location = self.location, None
        async with self.server.session.delete(
                self.server.url(location),
                headers={"Authorization": f"Bearer {self.token}"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"DELETE {location} answered {resp.status}: "
                                   f"{await resp.text()}")

    async def close(self) -> None:
        await self.pc.close()


# -- one run ------------------------------------------------------------------------------------

async def hop_counters(server: Server) -> dict[str, int]:
    """The server's hop counters as its `/metrics` page shows them."""
    async with server.session.get(server.url("/metrics")) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
    counts = dict.fromkeys(HOP_COUNTERS, 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "denoise_sfu_frames_denoised_total":
                counts["denoised"] += int(sample.value)
            elif sample.name == "denoise_sfu_frames_passed_through_total":
                reason = sample.labels.get("reason", "?")
                counts[reason] = counts.get(reason, 0) + int(sample.value)
    return counts


@dataclass
class RunResult:
    """One clip through the SFU: the figures, the server's hop counts over the run, and the
    publisher pipeline's own counters."""

    clip: Clip
    mode: str
    measures: Measures
    hops: dict[str, int]
    pipeline: dict[str, int]
    received: np.ndarray
    missing_samples: int
    seconds: float

    @property
    def hops_total(self) -> int:
        return sum(self.hops.values())

    @property
    def denoised_share(self) -> float:
        return self.hops["denoised"] / self.hops_total if self.hops_total else 0.0

    def summary(self) -> dict[str, Any]:
        return {"clip": self.clip.name, "snr_db": self.clip.snr_db, "mode": self.mode,
                **self.measures.as_dict(),
                "hops": {k: v for k, v in self.hops.items() if v},
                "denoised_share": round(self.denoised_share, 4),
                "missing_ms": round(1000 * self.missing_samples / SAMPLE_RATE, 1)}


async def run_clip(server: Server, clip: Clip, mode: str, room: str = "e2e",
                   secret: str | None = None) -> RunResult:
    """Publish `clip` over WHIP with `?mode=`, hear it over WHEP, measure it (module docstring).
    The server must be otherwise idle for the hop counts to be this run's alone."""
    began = time.monotonic()
    secret = secret or server.ctx.settings.secret
    before = await hop_counters(server)
    track = ClipTrack(clip.noisy)
    speaker = Peer(server, issue_token(secret, room, "speaker", 600, ("publish",)))
    listener = Peer(server, issue_token(secret, room, "listener", 600, ("subscribe",)))
    recorder = Recorder()
    pipeline: dict[str, int] = {}
    try:
        speaker.pc.addTransceiver(track, direction="sendonly")
        await speaker.post(f"/whip/{room}?mode={mode}")
        listener.pc.addTransceiver("audio", direction="recvonly")
        listener.pc.on("track", recorder.attach)
        await listener.post(f"/whep/{room}/speaker")
        await asyncio.wait_for(recorder.arrived.wait(), CONNECT_TIMEOUT_S)
        track.cue()
        await asyncio.wait_for(track.finished.wait(),
                               clip.samples / SAMPLE_RATE + CONNECT_TIMEOUT_S)
        await asyncio.sleep(0.3)  # the last frames' trip through the server and jitter buffer
        participant = server.ctx.registry.get(room).participants["speaker"]
        pipeline = participant.pipeline.counters.as_dict()
        await recorder.stop()
        await listener.delete()
        await speaker.delete()  # the server stops the pipeline and counts its last hops
    finally:
        await recorder.stop()
        for peer in (listener, speaker):
            with contextlib.suppress(Exception):
                await peer.delete()
            await peer.close()
        track.stop()
    after = await hop_counters(server)
    hops = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    received, missing = recorder.audio()
    return RunResult(clip, mode, measure(clip, received), hops, pipeline, received, missing,
                     time.monotonic() - began)


# -- clips --------------------------------------------------------------------------------------

SPEECH_48K = ("clean/vctk_p286/p286_011.wav", "clean/freesound_48k/clean_freesound_33711.wav")
NOISES = ("noise/speech_commands_bg/doing_the_dishes.wav",
          "noise/soundbible_ambience/Restaurant_Ambiance-SoundBible.com-628640170.wav",
          "noise/hu_nonspeech100/n10.wav", "noise/hu_nonspeech100/n32.wav",
          "noise/hu_nonspeech100/n64.wav", "noise/hu_nonspeech100/n99.wav")


def _speech_files(count: int) -> list[Path]:
    """The two 48 kHz recordings, then one utterance each of dev-split LibriSpeech speakers."""
    from denoiser.corpus.devset import speakers
    from denoiser.paths import SHARED_DATA_DIR

    files = [SHARED_DATA_DIR / p for p in SPEECH_48K]
    dev = speakers("dev")
    files += [dev[k][0] for k in sorted(dev) if k.startswith("librispeech:")]
    if len(files) < count:
        raise ValueError(f"only {len(files)} speech files available, {count} asked")
    return files[:count]


def bench_clips(count: int, snrs: Sequence[float], seconds: float,
                lead_s: float) -> list[Clip]:
    """`count` speech files x `snrs`, speech cut to `seconds`, each with its own real noise
    (dev split of the shared corpus, 16 kHz sources upsampled to 48 kHz)."""
    from denoiser.corpus.devset import load_48k
    from denoiser.paths import SHARED_DATA_DIR

    clips = []
    for i, path in enumerate(_speech_files(count)):
        speech = load_48k(path)[: round(seconds * SAMPLE_RATE)]
        noise_path = SHARED_DATA_DIR / NOISES[i % len(NOISES)]
        noise = load_48k(noise_path)
        for snr in snrs:
            clips.append(mix_clip(f"{path.stem}+{noise_path.stem}", speech, noise, snr,
                                  lead_s=lead_s))
    return clips


# -- the bench ----------------------------------------------------------------------------------

@dataclass
class LocalServer:
    """The SFU served on a real TCP port of this machine's interface."""

    app: Any
    base_url: str
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def ctx(self) -> Any:
        from sfu.context import CONTEXT

        return self.app[CONTEXT]


@contextlib.asynccontextmanager
async def local_server(engine: Any, **settings: Any) -> AsyncIterator[LocalServer]:
    """Serve `create_app(Settings(**settings), engine)` (a fresh secret) until the block ends."""
    import dataclasses

    from aiohttp import web

    from sfu.app import create_app
    from sfu.settings import Settings

    host = interface_address()
    if host.startswith("127."):
        raise RuntimeError("no non-loopback interface: aiortc peers cannot meet")
    config = dataclasses.replace(Settings(secret=secrets.token_hex(32), host=host, port=0),
                                 **settings)
    app = create_app(config, engine=engine)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            yield LocalServer(app, f"http://{host}:{port}", session)
    finally:
        await runner.cleanup()


def _fmt_hops(hops: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in hops.items() if v) or "none"


def _print_run(r: RunResult, off: RunResult | None) -> None:
    m = r.measures
    through = f" (mode off: {off.measures.si_sdr_out_db:5.1f})" if off is not None else ""
    print(f"{r.clip.name[:40]:<40} {r.clip.snr_db:4.1f} dB {r.mode:>4}: "
          f"NR {m.noise_reduction_db:5.1f} dB (median {m.noise_reduction_median_db:5.1f})  "
          f"speech {m.speech_level_change_db:+5.1f} dB  SI-SDR noisy {m.si_sdr_noisy_db:5.1f}"
          f"{through} -> {m.si_sdr_out_db:5.1f} dB  env {m.envelope_corr_noisy:.2f} -> "
          f"{m.envelope_corr_out:.2f}  hops {_fmt_hops(r.hops)}"
          f"{f' | off: {_fmt_hops(off.hops)}' if off is not None else ''}"
          f"  missing {1000 * r.missing_samples / SAMPLE_RATE:.0f} ms", flush=True)


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 2)


def aggregate(results: Sequence[RunResult], offs: Sequence[RunResult] = ()) -> dict[str, Any]:
    """Medians (and worst cases where a floor matters) over runs, and the hop totals; with the
    mode-off runs of the same clips, the noisy input's SI-SDR as received through the SFU."""
    def med(key: str) -> float:
        return _median([getattr(r.measures, key) for r in results])

    hops: dict[str, int] = {}
    for r in results:
        for k, v in r.hops.items():
            hops[k] = hops.get(k, 0) + v
    total = sum(hops.values())
    gains = [r.measures.si_sdr_out_db - r.measures.si_sdr_noisy_db for r in results]
    level_changes: list[float] = [r.measures.speech_level_change_db for r in results]
    worst_level_change: float = max(level_changes, key=abs)
    out: dict[str, Any] = {
        "runs": len(results),
        "noise_reduction_db_median": med("noise_reduction_db"),
        "noise_reduction_db_min": round(min(r.measures.noise_reduction_db for r in results), 2),
        "noise_reduction_block_median_db_median": med("noise_reduction_median_db"),
        "speech_level_change_db_median": med("speech_level_change_db"),
        "speech_level_change_db_worst": round(worst_level_change, 2),
        "si_sdr_noisy_db_median": med("si_sdr_noisy_db"),
        "si_sdr_out_db_median": med("si_sdr_out_db"),
        "si_sdr_gain_db_median": _median(gains),
        "envelope_corr_noisy_median": med("envelope_corr_noisy"),
        "envelope_corr_out_median": med("envelope_corr_out"),
        "hops": {k: v for k, v in hops.items() if v},
        "hops_denoised_share": round(hops.get("denoised", 0) / total, 4) if total else None,
        "missing_ms": round(1000 * sum(r.missing_samples for r in results) / SAMPLE_RATE, 1),
    }
    if offs:
        off_gains = [r.measures.si_sdr_out_db - o.measures.si_sdr_out_db
                     for r, o in zip(results, offs, strict=True)]
        out.update({
            "si_sdr_noisy_received_db_median": _median([o.measures.si_sdr_out_db
                                                        for o in offs]),
            "si_sdr_gain_vs_noisy_received_db_median": _median(off_gains),
            "si_sdr_gain_vs_noisy_received_db_min": round(min(off_gains), 2),
            "mode_off_level_change_db_median": _median([o.measures.level_change_db
                                                        for o in offs]),
            "mode_off_noise_reduction_db_median": _median([o.measures.noise_reduction_db
                                                           for o in offs]),
            "mode_off_hops": {k: v for k, v in aggregate(offs)["hops"].items() if v},
        })
    return out


async def _bench(args: argparse.Namespace) -> int:
    import torch

    from denoiser.engine.local import LocalEngine
    from denoiser.model.weights import load_default_model

    torch.set_num_threads(args.threads)
    clips = bench_clips(args.clips, args.snrs, args.seconds, args.lead)
    model = await asyncio.to_thread(load_default_model, args.device)
    engine = LocalEngine(model, device=args.device)
    await engine.start()
    runs: list[tuple[RunResult, RunResult | None]] = []
    timing = {k: v for k, v in (("hop_deadline", args.hop_deadline),
                                ("latency_budget", args.latency_budget)) if v is not None}
    try:
        async with local_server(engine, **timing) as server:
            settings = server.ctx.settings
            print(f"{len(clips)} clips, mode {args.mode}"
                  f"{' and off (reference)' if args.off_reference else ''}, model latency "
                  f"{1000 * engine.latency_samples / engine.sample_rate:.0f} ms, hop deadline "
                  f"{settings.hop_deadline} s, latency budget "
                  f"{settings.latency_budget or 'default'}, server {server.base_url}",
                  flush=True)
            for i, clip in enumerate(clips):
                off = None
                if args.off_reference:
                    off = await run_clip(server, clip, "off", room=f"e2e{i}off")
                r = await run_clip(server, clip, args.mode, room=f"e2e{i}")
                _print_run(r, off)
                runs.append((r, off))
    finally:
        await engine.close()
    by_snr: dict[float, list[tuple[RunResult, RunResult | None]]] = {}
    for pair in runs:
        by_snr.setdefault(pair[0].clip.snr_db, []).append(pair)

    def agg(pairs: Sequence[tuple[RunResult, RunResult | None]]) -> dict[str, Any]:
        offs = [o for _, o in pairs if o is not None]
        return aggregate([r for r, _ in pairs], offs if len(offs) == len(pairs) else ())

    for snr, pairs in sorted(by_snr.items()):
        a = agg(pairs)
        through = (f" (mode off: {a['si_sdr_noisy_received_db_median']})"
                   if "si_sdr_noisy_received_db_median" in a else "")
        print(f"SNR {snr:4.1f} dB, {len(pairs)} clips, medians: NR "
              f"{a['noise_reduction_db_median']} dB (block median "
              f"{a['noise_reduction_block_median_db_median']}), speech "
              f"{a['speech_level_change_db_median']:+} dB, SI-SDR noisy "
              f"{a['si_sdr_noisy_db_median']}{through} -> {a['si_sdr_out_db_median']} dB, "
              f"hops {_fmt_hops(a['hops'])}")
    total = agg(runs)
    print(f"overall, {len(runs)} clips: NR {total['noise_reduction_db_median']} dB (min "
          f"{total['noise_reduction_db_min']}), speech {total['speech_level_change_db_median']:+}"
          f" dB (worst {total['speech_level_change_db_worst']:+}), SI-SDR "
          f"{total['si_sdr_noisy_db_median']} -> {total['si_sdr_out_db_median']} dB, hops "
          f"{_fmt_hops(total['hops'])} ({100 * (total['hops_denoised_share'] or 0):.1f}% "
          "denoised)")
    summary = {"bench": "e2e", "mode": args.mode, "device": args.device, **timing,
               "snrs": list(args.snrs), "clips": args.clips, "speech_s": args.seconds,
               "model_latency_ms": round(1000 * engine.latency_samples / engine.sample_rate, 2),
               **total,
               "by_snr": {f"{snr:g}": {k: v for k, v in agg(pairs).items()
                                       if k.endswith("_median")}
                          for snr, pairs in sorted(by_snr.items())}}
    print(json.dumps(summary))
    return 0


def run_bench_e2e(args: argparse.Namespace) -> int:
    if args.mode not in ("auto", "on", "off"):
        raise SystemExit("--mode must be auto, on or off")
    if args.clips < 1 or not args.snrs:
        raise SystemExit("--clips must be >= 1 and --snrs must name at least one SNR")
    return asyncio.run(_bench(args))


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from err


def register_bench_e2e(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "e2e", help="real noisy speech over WHIP, heard over WHEP: noise reduction, SI-SDR")
    parser.add_argument("--clips", type=int, default=6, help="speech files (each its own noise)")
    parser.add_argument("--snrs", type=_floats, default=[0.0, 5.0, 10.0],
                        help="comma-separated SNRs in dB")
    parser.add_argument("--seconds", type=float, default=4.0, help="speech per clip (at most)")
    parser.add_argument("--lead", type=float, default=1.5, help="noise-only seconds first")
    parser.add_argument("--mode", default="on", help="auto, on or off")
    parser.add_argument("--off-reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also send each clip with mode=off: the noisy input as received")
    parser.add_argument("--hop-deadline", type=float, default=None,
                        help="seconds a hop may wait for the engine (default: serve's default)")
    parser.add_argument("--latency-budget", type=float, default=None,
                        help="seconds packet in to packet out (default: the pipeline's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.set_defaults(func=run_bench_e2e)
    return parser
