"""The training loop: it learns, it resumes to the identical state, it exports loadable weights."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from denoiser.training.loop import CHECKPOINT, LOG, SETTINGS, Trainer, TrainSettings, lr_factor
from denoiser.training.losses import si_sdr

pytestmark = pytest.mark.corpus


def tiny_settings(out: Path, **overrides: object) -> TrainSettings:
    base = dict(run="t", out=str(out), init="tiny", steps=3, batch=2, seconds=0.5, lr=3e-3,
                warmup=1, threads=1, val_every=2, val_size=2, checkpoint_every=1)
    base.update(overrides)
    return TrainSettings(**base)  # type: ignore[arg-type]


def test_loss_decreases_on_a_fixed_batch(tmp_path: Path) -> None:
    trainer = Trainer(tiny_settings(tmp_path, fixed_batch=True), progress=False)
    noisy, clean = trainer.next_batch()
    before = trainer.loss_on(noisy, clean)
    trainer.train()
    after = trainer.loss_on(noisy, clean)
    assert after < before * 0.99
    log = [json.loads(line) for line in (tmp_path / LOG).read_text().splitlines()]
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert any(r["kind"] == "val" and np.isfinite(r["val_si_sdr"]) for r in log)
    assert json.loads((tmp_path / SETTINGS).read_text())["init"] == "tiny"


def test_resume_reaches_the_identical_state(tmp_path: Path) -> None:
    straight = Trainer(tiny_settings(tmp_path / "a"), progress=False)
    straight.train()
    first = Trainer(tiny_settings(tmp_path / "b"), progress=False)
    assert first.train(until=2) is None  # interrupted after step 2
    resumed = Trainer(tiny_settings(tmp_path / "b", steps=3), resume=True, progress=False)
    assert resumed.step == 2
    resumed.train()
    a, b = straight.checkpoint_state(), resumed.checkpoint_state()
    assert a["step"] == b["step"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for p in opt_a:
        for k, v in opt_a[p].items():
            assert torch.equal(v, opt_b[p][k]), k
    assert a["scheduler"] == b["scheduler"]
    assert a["data_rng"] == b["data_rng"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    # The resumed run logged the same loss at step 3 as the straight one.
    def loss_at(folder: Path, step: int) -> float:
        rows = [json.loads(x) for x in (folder / LOG).read_text().splitlines()]
        return next(r["loss"] for r in rows if r["kind"] == "train" and r["step"] == step)
    assert loss_at(tmp_path / "a", 3) == loss_at(tmp_path / "b", 3)


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Trainer(tiny_settings(tmp_path), resume=True, progress=False)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        TrainSettings(init="bogus")
    with pytest.raises(ValueError):
        TrainSettings(steps=0)
    with pytest.raises(ValueError):
        TrainSettings(lookahead=-1)
    with pytest.raises(ValueError, match="bad device"):
        TrainSettings(device="toaster")
    with pytest.raises(ValueError, match="pause_share"):
        TrainSettings(pause_share=1.5)
    assert TrainSettings(pause_share=0.25).mix_config().p_pause == 0.25


def test_lr_schedule_warms_up_then_decays() -> None:
    values = [lr_factor(k, 10, 100, 0.05) for k in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.05, abs=0.01)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_dfn3_step_exports_loadable_weights(tmp_path: Path) -> None:
    """One real DFN3 step from the shipped weights, exported and loaded back."""
    from denoiser.model.weights import load_dfn3

    low = Trainer(tiny_settings(tmp_path / "low", init="default", lookahead=1), progress=False)
    assert low.model.latency_samples == 960  # the shipped weights, re-targeted to 20 ms
    settings = tiny_settings(tmp_path, init="default", lookahead=2, steps=1, batch=1,
                             seconds=0.3, lr=1e-5, val_size=1, threads=2)
    trainer = Trainer(settings, progress=False)
    assert trainer.model.latency_samples == 1440
    # The target alignment the loop assumes holds: output n estimates input n - latency.
    noisy, clean = trainer.validation_batch()
    with torch.no_grad():
        estimate, target = trainer._aligned(noisy, clean)
        lag = trainer.model.latency_samples
        assert float(si_sdr(estimate, target).mean()) > float(
            si_sdr(estimate[:, lag:], target[:, :-lag]).mean()) + 3
    from denoiser.model.weights import weights_path
    shipped = load_dfn3(weights_path(), config=trainer.model.cfg)
    for k, v in shipped.state_dict().items():  # starts from the default model's weights
        assert torch.equal(v, trainer.model.state_dict()[k]), k
    path = trainer.train()
    assert (tmp_path / CHECKPOINT).is_file()
    exported = torch.load(path, weights_only=True)
    assert exported["config"]["conv_lookahead"] == 2
    reloaded = load_dfn3(path)
    changed = [k for k, v in reloaded.state_dict().items()
               if not torch.equal(v, shipped.state_dict()[k])]
    assert changed  # the step moved the weights, and they load back
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, trainer.model.state_dict()[k]), k
    assert dataclasses.asdict(trainer.model.cfg)["conv_lookahead"] == 2
