"""Measure the bypass: per-hop cost, and quality through the real `auto` pipeline.

    denoise-sfu eval --suite bypass [--out DIR] [--quick]
    python -m denoiser.eval.bypass [--quick] [--kinds music,noisy_speech] [--out FILE]

Every clip runs through `LocalEngine` + `DenoisedStream` exactly as `denoise --mode auto` runs
it (the shipped DFN3 model on CPU, no deadline), once in `auto` and once in `on`; all streams
share one engine, so each tick is one batched forward (a batch gives the same output as single
streams). Reported per clip type:
- music (10 s excerpts from a cold start, and the whole 60 s hold-music tracks), call-progress
  tones, DTMF, pure tones: SI-SDR of the output against the input (aligned by the engine
  latency), `auto` and `on`, the level change (output RMS against input RMS, dB) and the share
  of hops bypassed; DTMF clips are decoded again;
- the music dev set (`music_dev`: 10 s from a cold start of every held-out package of the
  music cache, denoiser/corpus/music_devset.py), the same figures, and a table per kind of
  music (skipped, and said so, where `denoise-sfu corpus music` has not filled the cache);
- noisy speech (unseen dev speakers and noises): PESQ `auto` vs `on`, hops bypassed;
- announcements over hold music: STOI of the announcement in `auto`, with the mixture passed
  untouched (bypass held) and denoised (`on`);
- the detector's CPU time per hop on one core.
The last line printed is the summary as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from denoiser.bypass.analysis import resample
from denoiser.bypass.detector import BypassDetector
from denoiser.bypass.dtmf import decode_dtmf
from denoiser.eval.tone_synth import (
    CALL_PROGRESS_TONES,
    call_progress,
    dtmf_sequence,
    tone,
    white_noise,
)
from denoiser.model.streaming import StreamingModel
from denoiser.paths import SHARED_DATA_DIR
from denoiser.training.bypass_classifier import is_val

SR, HOP = 48_000, 480
TONE_KINDS = ("music", "music60", "music_dev", "call_progress", "dtmf", "tone")
MUSIC_KINDS = ("music", "music60", "music_dev")


@dataclass
class Clip:
    """One evaluation input. `ref` is the clean speech (noisy speech) or the announcement."""

    name: str
    kind: str  # one of TONE_KINDS, "noisy_speech" or "announcement"
    audio: np.ndarray
    digits: str | None = None
    ref: np.ndarray | None = None
    seg: slice | None = None  # where the announcement is
    label: str = ""  # the kind of music (music_dev clips)


def load(path: Path, seconds: float | None = None, start: float = 0.0) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(1)[int(start * sr) :]
    return resample(x if seconds is None else x[: int(seconds * sr)], sr, SR)


def at_rms(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * 10 ** (dbfs / 20)).astype(np.float32)


def speech_and_noise() -> tuple[list[Path], list[Path]]:
    """The dev split's speech files, and its noises of 3 s or more (none seen in training)."""
    speech = [p for p in sorted((SHARED_DATA_DIR / "clean").rglob("*.wav")) if is_val(p)]
    noise = [p for p in sorted((SHARED_DATA_DIR / "noise").rglob("*.wav"))
             if is_val(p) and sf.info(p).duration >= 3.0]
    return speech, noise


def tone_clips(quick: bool = False) -> list[Clip]:
    clips = []
    digits = "0123456789*#ABCD"
    clips.append(Clip("dtmf_all_keys", "dtmf", dtmf_sequence(digits)[0], digits))
    x, _ = dtmf_sequence("5551234", on=0.045, off=0.045, twist_db=4.0, level_dbfs=-26.0)
    clips.append(Clip("dtmf_fast_twist_noise", "dtmf",
                      x + white_noise(len(x) / SR, SR, -50, seed=1), "5551234"))
    for name in sorted(CALL_PROGRESS_TONES)[: 3 if quick else None]:
        clips.append(Clip(name, "call_progress", call_progress(name, 6.0, SR, -22.0)[0]))
    clips.append(Clip("tone_1khz", "tone", tone((1000.0,), 3.0, SR, -20.0)))
    clips.append(Clip("tone_2100hz_ced", "tone", tone((2100.0,), 3.0, SR, -20.0)))
    return clips


def music_clips(quick: bool = False) -> list[Clip]:
    files = sorted((SHARED_DATA_DIR / "music").rglob("*.wav"))[: 2 if quick else None]
    clips = [Clip(f"music/{p.stem}", "music",
                  at_rms(load(p, 10.0, 5.0 if sf.info(p).duration > 20 else 0.0), -24.0))
             for p in files]
    if not quick:  # whole 60 s hold-music tracks too: a cold start weighs less there
        clips += [Clip(f"music60/{p.stem}", "music60", at_rms(load(p), -24.0))
                  for p in files if p.parent.name == "asterisk_moh"]
    return clips


def music_dev_clips(quick: bool = False) -> list[Clip]:
    """The music dev set (held-out packages of the music cache), [] without the cache."""
    from denoiser.corpus.music_devset import dev_clips, load_clip

    clips = dev_clips(per_package=1 if quick else 4)
    return [Clip(f"music_dev/{c.name}", "music_dev", at_rms(load_clip(c), -24.0), label=c.kind)
            for c in clips]


def speech_clips(count: int, seed: int = 1) -> list[Clip]:
    """6 s of 3 dev utterances in a dev noise (tiled) at 0/5/10/20 dB SNR."""
    speech, noise = speech_and_noise()
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        s = np.concatenate([load(speech[int(j)]) for j in rng.choice(len(speech), 3)])[: 6 * SR]
        n = load(noise[i % len(noise)])
        n = np.tile(n, len(s) // len(n) + 1)[: len(s)]
        snr = (0.0, 5.0, 10.0, 20.0)[i % 4]
        clean = at_rms(s, -26.0)
        clips.append(Clip(f"speech{i}+{noise[i % len(noise)].stem}@{snr:g}dB", "noisy_speech",
                          clean + at_rms(n, -26.0 - snr), ref=clean))
    return clips


def announcement_clips(seed: int = 2) -> list[Clip]:
    """An announcement of 6 s from dev speakers after 3 s of hold music, at -5..+10 dB."""
    speech, _ = speech_and_noise()
    rng = np.random.default_rng(seed)
    music_all = sorted((SHARED_DATA_DIR / "music" / "asterisk_moh").glob("*.wav"))
    clips = []
    for k, smr in enumerate((-5.0, 0.0, 5.0, 10.0)):
        music = at_rms(load(music_all[k % len(music_all)], 10.0, 15.0), -26.0)
        words = np.concatenate([load(speech[int(j)]) for j in rng.choice(len(speech), 3)])
        words = at_rms(words[: 6 * SR], -26.0 + smr)
        ref = np.zeros_like(music)
        ref[3 * SR : 3 * SR + len(words)] = words
        clips.append(Clip(f"announcement@{smr:+g}dB", "announcement", music + ref, ref=ref,
                          seg=slice(3 * SR, 3 * SR + len(words))))
    return clips


KINDS = (*TONE_KINDS, "noisy_speech", "announcement")


def all_clips(quick: bool = False, kinds: tuple[str, ...] = KINDS) -> list[Clip]:
    """The evaluation's clips, or only those of `kinds` (to iterate on a part of the suite)."""
    clips = (music_clips(quick) + (music_dev_clips(quick) if "music_dev" in kinds else [])
             + tone_clips(quick) + speech_clips(8 if quick else 28)
             + ([] if quick else announcement_clips()))
    return [c for c in clips if c.kind in kinds]


async def _through(engine: object, i: int, x: np.ndarray, mode: str
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """One clip through its own `DenoisedStream` on `engine`; returns the whole output (not
    yet aligned) and the stream's hop counters, with `_raw_path` per input hop."""
    from denoiser.stream import DenoisedStream

    lat = engine.latency_samples  # type: ignore[attr-defined]
    n = len(x) + lat
    n += -n % HOP
    padded = np.zeros(n, np.float32)
    padded[: len(x)] = x
    det = BypassDetector() if mode == "auto" else None
    stream = DenoisedStream(engine, f"eval{i}", mode=mode, detector=det,  # type: ignore[arg-type]
                            deadline=None)
    out, raw_path = [], []
    try:
        for k in range(0, n, HOP):
            before = stream.counters["denoised"]
            out.append(await stream.process_hop(padded[k : k + HOP]))
            raw_path.append(stream.counters["denoised"] == before)
    finally:
        stream.close()
    counters: dict[str, Any] = dict(stream.counters)
    # per input hop: did its output pass raw (the output lags the input by `lat`)
    counters["_raw_path"] = raw_path[lat // HOP : lat // HOP + len(x) // HOP]
    return np.concatenate(out), counters


async def run_streams(model: StreamingModel, jobs: list[tuple[np.ndarray, str]],
                      on_cache: Path | None = None
                      ) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """Each (audio, mode) through its own `DenoisedStream`, all on one `LocalEngine`; returns
    the outputs aligned to the inputs (latency removed) and each stream's hop counters.

    With `on_cache` (a folder) the model runs only for clips whose mode-`on` output is not yet
    cached there; `auto` is then replayed over the cached output (denoiser/eval/replay.py),
    which gives what the full run gives (keep_warm: the engine sees every hop either way)."""
    from denoiser.engine.local import LocalEngine
    from denoiser.eval.replay import OnCache, ReplayEngine

    cache = None
    need = list(range(len(jobs)))
    if on_cache is not None:
        from denoiser.model.weights import weights_path

        wp = weights_path(None)
        cache = OnCache(on_cache, f"{wp.name}:{wp.stat().st_size if wp.is_file() else 0}")
        need = [i for i, (x, _) in enumerate(jobs) if cache.get(x) is None]
        # one `on` run per distinct clip is enough
        seen: dict[str, int] = {}
        for i in need:
            seen.setdefault(cache.path(jobs[i][0]).name, i)
        need = sorted(seen.values())
    results: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
    lat = 0
    if need:
        async with LocalEngine(model, device="cpu", max_streams=max(1, len(need)),
                               threads=1) as engine:
            lat = engine.latency_samples
            todo = [(i, jobs[i][0], "on" if cache is not None else jobs[i][1]) for i in need]
            outs = await asyncio.gather(*(_through(engine, i, x, m) for i, x, m in todo))
            for (i, x, _), r in zip(todo, outs, strict=True):
                results[i] = r
                if cache is not None:
                    cache.put(x, r[0])
    else:
        lat = model.latency_samples
    if cache is not None:
        full = {f"eval{i}": cache.get(x) for i, (x, _) in enumerate(jobs)}
        replay = ReplayEngine({k: v for k, v in full.items() if v is not None}, SR, HOP, lat)
        results = {}
        for i, (x, mode) in enumerate(jobs):
            f = full[f"eval{i}"]
            assert f is not None
            if mode == "on":
                results[i] = (f, {"denoised": len(f) // HOP})
            else:
                results[i] = await _through(replay, i, x, mode)
    return [(results[i][0][lat : lat + len(x)], results[i][1])
            for i, (x, _) in enumerate(jobs)]


def hop_cost(seconds: float = 20.0) -> dict[str, float]:
    """CPU time per `update` over music, speech-like audio and DTMF, one stream, one core."""
    music = at_rms(load(sorted((SHARED_DATA_DIR / "music").rglob("*.wav"))[0], seconds / 2), -24)
    rng = np.random.default_rng(0)
    speechy = at_rms(np.sin(np.cumsum(rng.uniform(0.01, 0.05, int(seconds / 4 * SR)))), -26)
    speechy = speechy + white_noise(len(speechy) / SR, SR, -36)
    dtmf, _ = dtmf_sequence("0123456789" * 3)
    x = np.concatenate([music, speechy, dtmf])
    hops = [x[i : i + HOP] for i in range(0, len(x) - HOP + 1, HOP)]
    det = BypassDetector()
    for h in hops[:100]:  # warm-up
        det.update(h)
    det = BypassDetector()
    times = np.empty(len(hops))
    cpu0 = time.process_time()
    for k, h in enumerate(hops):
        t = time.perf_counter()
        det.update(h)
        times[k] = time.perf_counter() - t
    cpu = time.process_time() - cpu0
    us = times * 1e6
    # wall-clock figures include time stolen by other processes on a shared machine; the CPU
    # time of this (single-threaded) process over all hops does not
    return {"hops": len(us), "cpu_mean_us": round(cpu / len(us) * 1e6, 1),
            "wall_p50_us": round(float(np.percentile(us, 50)), 1),
            "wall_p99_us": round(float(np.percentile(us, 99)), 1)}


def level_change_db(x: np.ndarray, y: np.ndarray) -> float:
    """Output level against input level (RMS), dB."""
    return float(10 * np.log10((np.mean(np.square(y, dtype=np.float64)) + 1e-20)
                               / (np.mean(np.square(x, dtype=np.float64)) + 1e-20)))


def cold_start(counters: dict[str, Any]) -> dict[str, Any]:
    """How a stream that opens on music starts: when its output first passed raw (ms of input
    time) and how much of its first 2 s was denoised (ms): a music stream that is bypassed
    at once and never denoised before that has 0 and 0."""
    raw = np.asarray(counters.get("_raw_path", []), bool)
    if not len(raw):
        return {"first_raw_ms": None, "denoised_first_2s_ms": None}
    first = int(np.argmax(raw)) if raw.any() else len(raw)
    return {"first_raw_ms": 10 * first, "denoised_first_2s_ms": 10 * int((~raw[:200]).sum())}


def longest_run(b: np.ndarray) -> int:
    """Length of the longest run of True."""
    best = run = 0
    for v in b:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def _bypassed(counters: dict[str, Any]) -> float:
    return 1 - counters["denoised"] / sum(counters.values())


def _score(clip: Clip, auto: tuple[np.ndarray, dict[str, Any]],
           on: tuple[np.ndarray, dict[str, Any]]) -> dict[str, Any]:
    from denoiser.eval.quality import pesq_wb, si_sdr, stoi

    (y_auto, counters), (y_on, _) = auto, on
    raw_path: list[bool] = counters.pop("_raw_path", [])
    row: dict[str, Any] = {"clip": clip.name, "kind": clip.kind, "label": clip.label,
                              "hops": sum(counters.values()),
                              "bypassed_hops": sum(counters.values()) - counters["denoised"],
                              "by_reason": {k: v for k, v in counters.items() if v}}
    x = clip.audio
    if clip.kind in TONE_KINDS:
        row["si_sdr_auto"] = round(si_sdr(x, y_auto), 2)
        row["si_sdr_on"] = round(si_sdr(x, y_on), 2)
        row["level_db_auto"] = round(level_change_db(x, y_auto), 2)
        row["level_db_on"] = round(level_change_db(x, y_on), 2)
        if clip.kind in MUSIC_KINDS:
            row.update(cold_start({"_raw_path": raw_path}))
        if clip.digits is not None:
            row["dtmf_in"] = clip.digits
            row["dtmf_auto"], row["dtmf_on"] = decode_dtmf(y_auto, SR), decode_dtmf(y_on, SR)
    elif clip.kind == "noisy_speech":
        assert clip.ref is not None
        row["pesq_noisy"] = round(pesq_wb(clip.ref, x), 3)
        row["pesq_on"] = round(pesq_wb(clip.ref, y_on), 3)
        row["pesq_auto"] = round(pesq_wb(clip.ref, y_auto), 3)
        raw = np.asarray(raw_path, bool)
        row["bypassed_s"] = round(float(raw.sum()) / 100, 2)
        row["longest_bypass_s"] = round(longest_run(raw) / 100, 2)
    else:
        assert clip.ref is not None and clip.seg is not None
        seg, ref = clip.seg, clip.ref
        row["stoi_bypass"] = round(stoi(ref[seg], x[seg]), 3)
        row["stoi_denoise"] = round(stoi(ref[seg], y_on[seg]), 3)
        row["stoi_auto"] = round(stoi(ref[seg], y_auto[seg]), 3)
    return row


def summarise(rows: list[dict[str, Any]], cost: dict[str, float]) -> dict[str, Any]:
    """Per clip type: SI-SDR min/mean; DTMF same/different; noisy speech; announcements."""
    out: dict[str, Any] = {}
    for kind in TONE_KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            # an output identical to its input scores inf: the means count it as 100 dB
            v = [min(100.0, float(r["si_sdr_auto"])) for r in rs]
            out[kind] = {"clips": len(rs), "si_sdr_min": round(min(v), 2),
                         "si_sdr_mean": round(float(np.mean(v)), 2),
                         "si_sdr_on_mean": round(float(np.mean(
                             [float(r["si_sdr_on"]) for r in rs])), 2),
                         "meets_20db": sum(x >= 20.0 for x in v),
                         "bit_exact": sum(float(r["si_sdr_auto"]) == float("inf")
                                          for r in rs),
                         "level_db_min": round(min(float(r["level_db_auto"])
                                                   for r in rs), 2)}
            if kind in MUSIC_KINDS:
                out[kind].update(
                    first_raw_ms_max=max(int(r["first_raw_ms"]) for r in rs),
                    cold_start_denoised_ms_max=max(int(r["denoised_first_2s_ms"])
                                                   for r in rs))
    dev = [r for r in rows if r["kind"] == "music_dev"]
    if dev:
        table = {}
        for label in sorted({str(r["label"]) for r in dev}):
            rs = [r for r in dev if r["label"] == label]
            v = [min(100.0, float(r["si_sdr_auto"])) for r in rs]
            lv = [float(r["level_db_auto"]) for r in rs]
            table[label] = {"clips": len(rs), "si_sdr_min": round(min(v), 2),
                            "si_sdr_mean": round(float(np.mean(v)), 2),
                            "meets_20db": sum(x >= 20.0 for x in v),
                            "level_db_min": round(min(lv), 2),
                            "level_db_mean": round(float(np.mean(lv)), 2),
                            "si_sdr_on_mean": round(float(np.mean(
                                [float(r["si_sdr_on"]) for r in rs])), 2)}
        out["music_dev_by_kind"] = table
    d = [r for r in rows if "dtmf_in" in r]
    out["dtmf_decode"] = {"same_auto": sum(r["dtmf_auto"] == r["dtmf_in"] for r in d),
                          "same_on": sum(r["dtmf_on"] == r["dtmf_in"] for r in d),
                          "clips": len(d)}
    s = [r for r in rows if r["kind"] == "noisy_speech"]
    if s:
        hops = sum(int(r["hops"]) for r in s)
        out["noisy_speech"] = {
            "clips": len(s),
            "bypassed_pct": round(100 * sum(int(r["bypassed_hops"]) for r in s)
                                  / hops, 2),
            "clips_over_5pct": sum(int(r["bypassed_hops"]) > 0.05 * int(r["hops"])
                                   for r in s),
            "pesq_auto": round(float(np.mean([r["pesq_auto"] for r in s])), 3),
            "pesq_on": round(float(np.mean([r["pesq_on"] for r in s])), 3),
            "clips_bypassed_over_0.5s": sum(float(r["bypassed_s"]) > 0.5
                                            for r in s),
            "bypassed_s_max": max(float(r["bypassed_s"]) for r in s)}
    a = [r for r in rows if r["kind"] == "announcement"]
    if a:
        out["announcements_stoi"] = {r["clip"]: {k: r[k] for k in (
            "stoi_auto", "stoi_bypass", "stoi_denoise")} for r in a}
    out["hop_cost_cpu_us"] = cost["cpu_mean_us"]
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["clip type        clips  SI-SDR auto min / mean   (on: mean)   >= 20 dB  (untouched)"]
    for kind in TONE_KINDS:
        s = summary.get(kind)
        if isinstance(s, dict):
            lines.append(f"{kind:<16} {s['clips']:>5}  {s['si_sdr_min']:>8.2f} / "
                         f"{s['si_sdr_mean']:<8.2f}       ({s['si_sdr_on_mean']:.2f})    "
                         f"{s['meets_20db']}/{s['clips']}     ({s['bit_exact']})")
    t = summary.get("music_dev_by_kind")
    if isinstance(t, dict):
        lines.append("music dev set by kind: clips, SI-SDR auto min / mean, >= 20 dB, level "
                     "change min / mean (dB), (on: SI-SDR mean)")
        for label, v in t.items():
            lines.append(f"  {label:<14} {v['clips']:>3}  {v['si_sdr_min']:>7.2f} / "
                         f"{v['si_sdr_mean']:<7.2f} {v['meets_20db']}/{v['clips']}   "
                         f"{v['level_db_min']:+.2f} / {v['level_db_mean']:+.2f}   "
                         f"({v['si_sdr_on_mean']:.2f})")
    elif "music_dev" in summary.get("kinds", ()):
        lines.append("music dev set: no clips (run `denoise-sfu corpus music` to fill the cache)")
    d = summary["dtmf_decode"]
    assert isinstance(d, dict)
    lines.append(f"DTMF digits decoded the same: auto {d['same_auto']}/{d['clips']}, "
                 f"on {d['same_on']}/{d['clips']}")
    s = summary.get("noisy_speech")
    if isinstance(s, dict):
        lines.append(f"noisy speech ({s['clips']} clips): {s['bypassed_pct']} % of hops bypassed "
                     f"({s['clips_over_5pct']} clips over 5 %), PESQ auto {s['pesq_auto']} "
                     f"vs on {s['pesq_on']}; {s['clips_bypassed_over_0.5s']} clips bypassed "
                     f"over 0.5 s (most {s['bypassed_s_max']} s)")
    a = summary.get("announcements_stoi")
    if isinstance(a, dict):
        for name, v in a.items():
            lines.append(f"{name}: STOI auto {v['stoi_auto']}, bypass held {v['stoi_bypass']}, "
                         f"denoised {v['stoi_denoise']}")
    lines.append(f"detector cost: {summary['hop_cost_cpu_us']} us CPU per hop")
    return "\n".join(lines)


async def evaluate(quick: bool = False, verbose: bool = True,
                   kinds: tuple[str, ...] = KINDS, on_cache: Path | None = None
                   ) -> dict[str, Any]:
    import torch

    from denoiser.model.weights import load_default_model

    torch.set_num_threads(1)
    cost = hop_cost()
    if verbose:
        print(json.dumps({"hop_cost": cost}), flush=True)
    model = load_default_model("cpu")
    clips = all_clips(quick, kinds)
    t0 = time.monotonic()
    outs = await run_streams(model, [(c.audio, m) for c in clips for m in ("auto", "on")],
                             on_cache)
    rows = []
    for i, clip in enumerate(clips):
        row = _score(clip, outs[2 * i], outs[2 * i + 1])
        rows.append(row)
        if verbose:
            print(json.dumps(row), flush=True)
    summary = summarise(rows, cost)
    summary["kinds"] = list(kinds)
    return {"summary": summary, "clips": rows, "hop_cost": cost,
            "seconds": round(time.monotonic() - t0, 1)}


def run(out: Path | None, quick: bool = False, kinds: tuple[str, ...] = KINDS,
        on_cache: Path | None = None) -> dict[str, Any]:
    """Evaluate; print the rows, the per-type table and (last) the summary as one JSON line."""
    report = asyncio.run(evaluate(quick, kinds=kinds, on_cache=on_cache))
    print(format_summary(report["summary"]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"figures: {out}")
    print(json.dumps(report["summary"]), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer clips")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated clip types among {','.join(KINDS)} (default: all)")
    ap.add_argument("--on-cache", type=Path, default=None,
                    help="folder of cached mode-on outputs: run the model only for clips not "
                         "yet there and replay `auto` over them (to iterate on the detector)")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--kinds: choose among {','.join(KINDS)}")
    run(args.out, args.quick, kinds, args.on_cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
