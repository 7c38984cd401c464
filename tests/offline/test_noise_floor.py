"""`python -m denoiser.eval.noise_floor`: dev noises alone through a model (a long talker pause)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from denoiser.corpus.devset import split_of
from denoiser.eval import noise_floor
from denoiser.model.streaming import State, StreamingModel
from denoiser.model.weights import load_default_model

pytestmark = pytest.mark.corpus


class Delay(StreamingModel):
    """Passes the input through, `latency_samples` late: removes nothing."""

    latency_samples = 480

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        return {"last": torch.zeros(batch, self.hop_size, device=device, dtype=dtype)}

    def step(self, hops: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return state["last"], {"last": hops.clone()}


def test_dev_noises_only_and_at_one_level() -> None:
    noises = noise_floor.dev_noises(2.0)
    assert len(noises) >= 5
    for _, x in noises:
        assert x.shape[0] == 2 * 48_000
        assert 10 * np.log10(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(-30, abs=0.01)
    dev = {f"{p.parent.name}/{p.name}" for p in noise_floor.corpus_files("noise")
           if split_of(p) == "dev"}
    assert {name for name, _ in noises} <= dev


def test_a_pass_through_removes_nothing_and_the_default_removes_noise() -> None:
    name, noise = noise_floor.dev_noises(2.0)[0]
    assert noise_floor.noise_reduction_db(Delay(), noise) == pytest.approx(0.0, abs=1e-6)
    assert noise_floor.noise_reduction_db(load_default_model(), noise) > 10.0, name


def test_command_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    noise_floor.main(["--seconds", "2", "--model", "default"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    row = report["summary"]["default"]
    assert row["recordings"] == len(report["per_recording"]["default"]) >= 5
    assert row["min_db"] <= row["median_db"]
