"""`denoise-sfu train` from the command line (tiny model: seconds, not minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from denoiser.training.export import main as export_main
from sfu.cli import main

pytestmark = pytest.mark.corpus

ARGS = ["train", "--init", "tiny", "--batch", "1", "--seconds", "0.3", "--threads", "1",
        "--val-every", "1", "--val-size", "1", "--checkpoint-every", "1", "--no-progress"]


def test_train_command_runs_resumes_and_exports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*ARGS, "--steps", "1", "--out", str(out), "--pause-share", "0.5"]) == 0
    assert main([*ARGS, "--steps", "2", "--out", str(out), "--resume"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["init"] == "tiny" and settings["steps"] == 2
    assert settings["pause_share"] == 0.5
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    weights = torch.load(out / "dfn3.pt", weights_only=True)
    assert "kernel" in weights["state_dict"]
    assert "weights:" in capsys.readouterr().out


def test_train_command_rejects_bad_input(tmp_path: Path, capsys) -> None:
    assert main([*ARGS, "--steps", "0", "--out", str(tmp_path)]) == 2
    assert main([*ARGS, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert main([*ARGS, "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "steps must be at least 1" in err and "nothing to resume" in err


def test_kept_checkpoints_average_into_a_shipped_file(tmp_path: Path, capsys) -> None:
    """`--keep-checkpoints` keeps each step's checkpoint; `training.export --average` ships
    their mean (float16) with the steps it came from."""
    out = tmp_path / "run"
    assert main([*ARGS, "--steps", "2", "--lr", "0.1", "--out", str(out),
                 "--keep-checkpoints"]) == 0
    kept = [out / "checkpoint_step1.pt", out / "checkpoint_step2.pt"]
    states = [torch.load(p, weights_only=False)["model"] for p in kept]
    assert not torch.equal(states[0]["kernel"], states[1]["kernel"])  # they really differ
    shipped = tmp_path / "models" / "avg.pt"
    export_main([*map(str, kept), str(shipped), "--average", "--note", "mean of 1, 2"])
    body = torch.load(shipped, weights_only=True)
    mean = (states[0]["kernel"] + states[1]["kernel"]) / 2
    assert body["state_dict"]["kernel"].dtype == torch.float16
    assert torch.allclose(body["state_dict"]["kernel"].float(), mean, atol=1e-3)
    assert body["provenance"]["settings"]["averaged_steps"] == [1, 2]
    assert body["provenance"]["shipped"] == "mean of 1, 2"
    assert not (tmp_path / "models" / "avg.averaged").exists()
    with pytest.raises(SystemExit):
        export_main([*map(str, kept), str(tmp_path / "x.pt")])  # several files need --average
    with pytest.raises(SystemExit):
        export_main([str(kept[0]), str(tmp_path / "x.pt")])  # a checkpoint needs --average
    assert "ship it with --average" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_shipped_file_keeps_its_parent_and_can_stay_float32(tmp_path: Path) -> None:
    """`--parent` keeps the provenance (source, licence) of the file a run started from, and
    its model tag; `--float32` ships the weights unrounded."""
    out = tmp_path / "run"
    assert main([*ARGS, "--steps", "1", "--out", str(out)]) == 0
    parent = tmp_path / "parent.pt"
    torch.save({"model": "tag", "state_dict": {},
                "provenance": {"weights": {"licence": "MIT (upstream)"}}}, parent)
    shipped = tmp_path / "shipped.pt"
    export_main([str(out / "dfn3.pt"), str(shipped), "--float32", "--parent", str(parent)])
    body = torch.load(shipped, weights_only=True)
    run = torch.load(out / "dfn3.pt", weights_only=True)
    assert body["state_dict"]["kernel"].dtype == torch.float32
    assert torch.equal(body["state_dict"]["kernel"], run["state_dict"]["kernel"])
    assert body["provenance"]["parent"] == {"weights": {"licence": "MIT (upstream)"}}
    assert body["model"] == "tag"
