"""What a GPU training session relies on: smaller DFN3 sizes that learn from scratch,
distillation, several runs on shared batches (`together`), a packed corpus, and the default
model's weights being selectable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from denoiser.corpus.devset import split_of
from denoiser.model.dfn3 import DFN3
from denoiser.model.dfn3.config import SIZES, sized_config
from denoiser.paths import SHARED_DATA_DIR
from denoiser.training import together
from denoiser.training.loop import LOG, Trainer, TrainSettings
from denoiser.training.pack import pack

needs_corpus = pytest.mark.corpus


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_parameter_of_a_fresh_model_gets_a_gradient(size: str) -> None:
    """A fresh network must be trainable: a layer that starts at zero in front of a ReLU (as
    GroupedLinear once did) leaves everything before it without gradient."""
    torch.manual_seed(0)
    model = DFN3(sized_config(size, conv_lookahead=1, df_lookahead=1)).train()
    audio = torch.randn(2, 480 * 12) * 0.1
    model(audio).pow(2).mean().backward()
    # (The local-SNR head is an auxiliary output the audio does not depend on.)
    dead = [name for name, p in model.named_parameters()
            if not name.startswith("enc.lsnr_fc") and (p.grad is None or
                                                        not torch.any(p.grad != 0))]
    assert not dead


def test_sizes_shrink_the_network() -> None:
    counts = {size: sum(p.numel() for p in DFN3(sized_config(size)).parameters())
              for size in SIZES}
    assert counts["dfn3"] > counts["dfn3-m"] > counts["dfn3-s"]
    with pytest.raises(ValueError, match="unknown model size"):
        sized_config("huge")
    with pytest.raises(ValueError, match="no shipped weights"):
        TrainSettings(size="dfn3-s", init="default")


def test_default_model_is_the_fine_tuned_20_ms_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from denoiser.model.weights import load_default_model, load_model

    default = load_default_model()
    assert default.latency_samples == 960 and default.cfg.conv_lookahead == 1
    # Its lineage: the GPU fine-tune (H100), then the CPU fine-tune with talker pauses.
    assert "H100" in default.provenance["parent"].get("shipped", "")
    assert default.provenance["settings"]["pause_share"] == 0.5
    original = load_default_model(weights="dfn3.pt")
    assert original.latency_samples == 1440
    assert any(not torch.equal(a, b) for a, b in zip(default.state_dict().values(),
                                                       original.state_dict().values(),
                                                       strict=True))
    monkeypatch.setenv("DENOISE_SFU_MODEL_WEIGHTS", "dfn3.pt")
    assert load_default_model().latency_samples == 1440
    assert load_model("dfn3_la1.pt").latency_samples == 960  # denoise --model NAME.pt


@needs_corpus
def test_together_steps_every_run_on_the_same_batches(tmp_path: Path) -> None:
    plan = {"batch": 2, "seconds": 0.3, "runs": [
        {"run": "tiny", "init": "tiny", "steps": 3, "lr": 1e-3, "warmup": 1, "val_size": 1},
        {"run": "small", "init": "scratch", "size": "dfn3-s", "lookahead": 1, "steps": 3,
         "lr": 1e-3, "warmup": 1, "distill": 0.5, "val_size": 1}]}
    args = argparse.Namespace(data=SHARED_DATA_DIR, device="cpu", seed=0, threads=1,
                              out=tmp_path)
    trainers = together.build_trainers(plan, args)
    stream = together.MixStream(SHARED_DATA_DIR, plan["batch"], 0, 480,
                                trainers[0].settings.mix_config())
    together.train_together(trainers, iter(stream), budget=600, probe=100,
                            device=torch.device("cpu"))
    for trainer in trainers:
        assert trainer.step == 3  # stopped by steps, well inside the budget
        weights = together.finish(trainer)
        assert weights.is_file()
        records = [json.loads(line) for line in (trainer.out / LOG).read_text().splitlines()]
        assert sum(r["kind"] == "train" for r in records) == 3
    small = [json.loads(line) for line in (tmp_path / "small" / LOG).read_text().splitlines()]
    assert all(r["distill"] > 0 for r in small if r["kind"] == "train")


@needs_corpus
def test_a_plans_data_keys_reach_every_run(tmp_path: Path) -> None:
    """One stream of mixes feeds all runs of a plan: the plan's screen and pause share are
    each run's settings too, so that its validation mixes are drawn alike and its
    settings.json says what it was trained on."""
    plan = {"batch": 1, "seconds": 0.5, "min_speech_bak": 3.5, "pause_share": 0.5,
            "talker_share": 0.6, "runs": [
        {"run": "a", "init": "tiny", "steps": 1, "val_size": 1},
        {"run": "b", "init": "tiny", "steps": 1, "val_size": 1}]}
    args = argparse.Namespace(data=SHARED_DATA_DIR, device="cpu", seed=0, threads=1,
                              out=tmp_path)
    for trainer in together.build_trainers(plan, args):
        assert trainer.settings.min_speech_bak == 3.5
        assert trainer.val_mixer.config.p_pause == 0.5
        assert trainer.val_mixer.config.p_talker == 0.6


@needs_corpus
def test_distillation_target_is_aligned_with_the_clean_signal(tmp_path: Path) -> None:
    trainer = Trainer(TrainSettings(run="d", out=str(tmp_path), init="tiny", batch=1,
                                    seconds=1.0, val_size=1, threads=1), progress=False)
    noisy, clean = trainer.validation_batch()
    target = trainer.teacher_target(noisy, clean)
    assert target.shape == clean.shape
    # The teacher's estimate of clean speech lines up with it at lag 0, not at its latency.
    x, y = clean[0].numpy(), target[0].numpy()
    lags = range(-1500, 1501, 60)
    scores = [float(np.dot(x[1500:-1500], np.roll(y, -lag)[1500:-1500])) for lag in lags]
    assert list(lags)[int(np.argmax(scores))] == 0


def write_wav(path: Path, seconds: float, rate: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(str(path), (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32), rate)


def test_pack_keeps_the_train_split_in_the_corpus_layout(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    names = [f"clean/librispeech_train-clean-100/{speaker}-1-0000.wav" for speaker in range(40)]
    names += [f"noise/hu_nonspeech100/n{i}.wav" for i in range(1, 11)]
    for i, name in enumerate(names):
        write_wav(src / name, 0.5, 16_000, i)
    files, written = pack(src, tmp_path / "packed", speech_quality=0.3)
    train = [n for n in names if split_of(src / n) == "train"]
    assert 0 < len(train) < len(names) and files == len(train) and written > 0
    for name in train:
        suffix = ".ogg" if name.startswith("clean/") else ".flac"
        out = tmp_path / "packed" / Path(name).with_suffix(suffix)
        info = sf.info(str(out))
        assert info.samplerate == 16_000 and abs(info.frames - 8000) < 400
        assert split_of(out) == "train"  # the same split for the compressed copy
