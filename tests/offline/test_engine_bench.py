"""`denoise-sfu bench engine` end to end on the tiny model (the figures themselves are not
asserted beyond sanity: speed is measured by running the bench, not by tests)."""

from __future__ import annotations

import json

import pytest

from denoiser.bench.engine import anchor_streams_per_core
from sfu.cli import main
from support.models import HOP

KEYS = {"streams_per_core", "tick_p50_ms", "tick_p99_ms", "rnnoise_streams_per_core",
        "dfn3_streams_per_core", "device", "threads", "paced"}


def test_bench_engine_ends_with_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "engine", "--model", "support.models:make_tiny", "--seconds", "0.5",
                 "--max-streams", "4", "--no-anchors", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result.keys() >= KEYS
    assert result["device"] == "cpu" and result["threads"] == 1
    # The tiny model is far faster than real time: the search reaches its bound.
    assert result["streams_per_core"] == 4
    paced = result["paced"]
    assert paced["streams"] == 4 and paced["hops_failed"] == 0
    assert paced["hops_sent"] >= 4 * 0.5 * 48_000 // HOP * 0.9
    assert 0 < result["tick_p50_ms"] <= result["tick_p99_ms"]
    assert set(result["tick_ms_by_batch"]) >= {"1", "2", "4"}
    # By default every request is a 20 ms frame, run as one multi-hop call per tick on CPU.
    assert result["frame_hops"] == 2 and result["multi_hop"] is True


def test_bench_engine_one_hop_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "engine", "--model", "support.models:make_tiny", "--seconds", "0.5",
                 "--max-streams", "2", "--no-anchors", "--frame-hops", "1", "--no-multi-hop"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["frame_hops"] == 1 and result["multi_hop"] is False
    assert result["streams_per_core"] == 2
    paced = result["paced"]
    assert paced["hops_failed"] == 0
    assert paced["hops_sent"] >= 2 * 0.5 * 48_000 // HOP * 0.9


def test_anchor_timing_is_measured() -> None:
    value = anchor_streams_per_core("rnnoise", 0.3)
    assert value is not None and value > 1.0  # RNNoise is far faster than real time


def test_bench_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "engine", "--seconds", "0", "--no-anchors"]) == 2
    assert "--seconds" in capsys.readouterr().err
    assert main(["bench", "engine", "--frame-hops", "0", "--no-anchors"]) == 2
    assert "--frame-hops" in capsys.readouterr().err
