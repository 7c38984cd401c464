"""`denoise-sfu eval` end to end on real dev clips, and the harness's summaries and verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from denoiser.corpus.devset import build_devset, read_clip
from denoiser.eval.harness import (
    EvalError,
    Item,
    evaluate,
    format_report,
    summarise,
    verdicts,
)
from denoiser.eval.quality import si_sdr
from sfu.cli import main


@pytest.mark.corpus
@pytest.mark.slow
def test_eval_command_with_anchors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["eval", "--clips", "2", "--systems", "rnnoise,dfn3", "--jobs", "2",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--spectrograms", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert "all (2 clips)" in text and "noise=babble (1)" in text and "snr=0-5dB (2)" in text
    for system in ("noisy", "rnnoise", "dfn3", "clean"):
        assert f"\n{system} " in text
    png = out / "spectrograms.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (out / "clip0001_dfn3.wav").is_file()
    report = json.loads((out / "eval.json").read_text())
    overall = report["summary"]["overall"]
    assert report["verdicts"] == []  # no `ours`, nothing to judge
    for system in ("noisy", "rnnoise", "dfn3"):
        assert all(np.isfinite(overall[system][m]) for m in ("pesq", "stoi", "si_sdr"))
        assert 1.0 <= overall[system]["dnsmos_ovrl"] <= 5.0
    assert overall["clean"]["pesq"] is None and overall["clean"]["dnsmos_ovrl"] > 2.5
    # Both anchors clean up 0-5 dB mixes: better SI-SDR and DNSMOS than the input.
    for anchor in ("rnnoise", "dfn3"):
        assert overall[anchor]["si_sdr"] > overall["noisy"]["si_sdr"]
        assert overall[anchor]["dnsmos_ovrl"] > overall["noisy"]["dnsmos_ovrl"]
    assert len(report["clips"]) == 2
    # The talker's pauses (metrics_quality.gap_noise_reduction, tested there) are a column of
    # every system; these two clips have none long enough, so the figure is left empty.
    assert "gap NR" in text and overall["clean"]["gap_nr"] is None
    for clip in report["clips"]:
        assert all("gap_nr" in scores for scores in clip["scores"].values())


@pytest.mark.corpus
@pytest.mark.slow
def test_ours_is_aligned_through_the_streaming_path(tmp_path: Path) -> None:
    folder, clips = build_devset(1, seed=0, cache_dir=tmp_path)  # a 0-5 dB "noise" clip
    item = Item(clips[0].id, folder / clips[0].noisy, folder / clips[0].clean, {})
    (result,) = evaluate([item], ["ours"], jobs=1, keep_audio_for=1)
    clean, noisy = read_clip(folder, clips[0])
    ours = result["audio"]["ours"]
    assert ours.shape == noisy.shape
    aligned = si_sdr(clean, ours)
    assert aligned > si_sdr(clean, noisy) + 3.0
    # One hop early or late is far worse: the latency was removed exactly.
    assert aligned > si_sdr(clean[:-480], ours[480:]) + 3.0
    assert aligned > si_sdr(clean[480:], ours[:-480]) + 3.0


def _result(clip: str, stoi: dict[str, float], base: float) -> dict:
    scores = {s: {"pesq": base, "stoi": v, "si_sdr": base, "dnsmos_ovrl": base}
              for s, v in stoi.items()}
    scores["ours"]["pesq"] = base + 0.5
    scores["clean"] = {"pesq": None, "stoi": None, "si_sdr": None, "dnsmos_ovrl": 3.0}
    return {"id": clip, "conditions": {"noise": "babble" if clip == "a" else "noise"},
            "scores": scores, "audio": {}}


def test_summary_and_verdicts() -> None:
    results = [_result("a", {"noisy": 0.8, "ours": 0.85, "rnnoise": 0.7, "dfn3": 0.9}, 2.0),
               _result("b", {"noisy": 0.9, "ours": 0.88, "rnnoise": 0.8, "dfn3": 0.9}, 3.0)]
    systems = ["ours", "rnnoise", "dfn3"]
    summary = summarise(results, systems)
    assert summary["systems"] == ["noisy", "ours", "rnnoise", "dfn3", "clean"]
    assert summary["overall"]["ours"]["stoi"] == pytest.approx(0.865)
    assert summary["breakdowns"]["noise"]["babble"]["means"]["ours"]["pesq"] == 2.5
    checks = {c["check"]: c for c in verdicts(results, summary)}
    assert checks["ours > rnnoise on pesq"]["pass"]
    assert checks["ours > rnnoise on stoi"]["pass"]
    assert not checks["ours > rnnoise on si_sdr"]["pass"]  # a tie does not beat
    assert checks["ours >= dfn3 on si_sdr"]["pass"]  # but it reaches
    assert not checks["ours >= dfn3 on stoi"]["pass"]
    stoi_check = checks["ours STOI >= noisy STOI on every clip"]
    assert not stoi_check["pass"] and stoi_check["clips_below"] == 1
    assert stoi_check["worst_clip"] == "b"
    assert stoi_check["clips_below_by_0.001_or_less"] == 0
    assert stoi_check["clips_below_per_system"] == {"ours": 1, "rnnoise": 2, "dfn3": 0}
    text = format_report(summary, list(checks.values()))
    assert "[FAIL] must: ours STOI >= noisy STOI" in text and "noise=babble (1)" in text
    assert "every system: ours 1, rnnoise 2, dfn3 0" in text


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    item = Item("x", tmp_path / "x.wav", None, {})
    with pytest.raises(EvalError, match="unknown system"):
        evaluate([item], ["nope"])
    with pytest.raises(EvalError, match="no items"):
        evaluate([], ["rnnoise"])
    assert main(["eval", "--clips", "0"]) == 2
