"""The resumable training loop: AdamW, warm-up + cosine LR, gradient clipping, checkpoints.

A run lives in one folder (`models/<run>/` by default):
- `settings.json`   the settings of the run (written at start, kept on resume)
- `train_log.jsonl` one JSON object per step (`"kind": "train"`) and per validation (`"val"`)
- `checkpoint.pt`   model + optimiser + scheduler + step + every RNG (written atomically)
- the exported weights (`denoiser.training.export`), in the format `load_default_model` reads.

Resuming restores the checkpoint exactly: the data generator's state is part of it, so a run
resumed at step k draws the same batches as one that never stopped (tested).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from denoiser.model.streaming import StreamingModel
from denoiser.paths import MODELS_DIR, SHARED_DATA_DIR
from denoiser.training import data as mixdata
from denoiser.training.export import export_weights
from denoiser.training.losses import LossConfig, TrainingLoss, si_sdr

CHECKPOINT = "checkpoint.pt"
SETTINGS = "settings.json"
LOG = "train_log.jsonl"
INITS = ("default", "scratch", "tiny", "gtcrn")


@dataclass
class TrainSettings:
    """Everything that defines a run (saved as settings.json)."""

    run: str = "finetune"
    out: str = ""  # defaults to models/<run>
    data: str = str(SHARED_DATA_DIR)
    init: str = "default"
    steps: int = 2000
    batch: int = 8
    seconds: float = 3.0
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: int = 100
    min_lr_ratio: float = 0.05
    clip_grad: float = 1.0
    threads: int = 2
    seed: int = 0
    val_every: int = 200
    val_size: int = 16
    checkpoint_every: int = 100
    si_sdr_weight: float = 0.0
    fixed_batch: bool = False  # train on one batch again and again (a sanity check)
    lookahead: int | None = None  # DFN3 look-ahead in hops; None keeps the model's own
    size: str = "dfn3"  # network size (denoiser.model.dfn3.config.SIZES); others start from scratch
    distill: float = 0.0  # weight of the loss against the shipped DFN3's output (a teacher)
    min_speech_bak: float | None = None  # train only on speech passing the reference screen
    pause_share: float = 0.0  # share of mixes whose talker pauses (MixConfig.p_pause)
    talker_share: float = 0.0  # share with a competing talker 12-24 dB under (MixConfig.p_talker)
    keep_checkpoints: bool = False  # also keep each checkpoint as checkpoint_step<N>.pt
    device: str = "cpu"
    loss: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init not in INITS and not self.init.endswith(".pt"):
            raise ValueError(f"--init must be one of {INITS} or a weights file (.pt), "
                             f"not {self.init!r}")
        for name in ("steps", "batch", "threads", "val_every", "val_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lookahead is not None and self.lookahead < 0:
            raise ValueError("lookahead must be 0 or more")
        from denoiser.model.dfn3.config import SIZES
        if self.size not in SIZES:
            raise ValueError(f"--size must be one of {sorted(SIZES)}, not {self.size!r}")
        if self.size != "dfn3" and self.init == "default":
            raise ValueError(f"--size {self.size} has no shipped weights: use --init scratch")
        if self.distill < 0:
            raise ValueError("distill must be 0 or more")
        if not 0.0 <= self.pause_share <= 1.0:
            raise ValueError("pause_share must be within 0..1")
        if not 0.0 <= self.talker_share <= 1.0:
            raise ValueError("talker_share must be within 0..1")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"bad device {self.device!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked, but torch sees no CUDA device")
        if self.seconds <= 0.1:
            raise ValueError("seconds must be above 0.1")
        if not self.out:
            self.out = str(MODELS_DIR / self.run)

    def mix_config(self) -> mixdata.MixConfig:
        """How this run's mixes (train and validation alike) are drawn."""
        return mixdata.MixConfig(seconds=self.seconds, p_pause=self.pause_share,
                                 p_talker=self.talker_share)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})  # type: ignore[arg-type]


def build_model(settings: TrainSettings) -> StreamingModel:
    """The model a run starts from: the shipped DFN3 weights, a fresh DFN3, or the tiny FIR."""
    init = settings.init
    if init == "tiny":
        from denoiser.training.tiny import TinyFIRModel
        return TinyFIRModel()
    if init == "gtcrn" or (init.endswith(".pt") and _is_gtcrn48(init)):
        return _gtcrn48(settings).requires_grad_(True).train()
    from denoiser.model.dfn3 import DFN3
    from denoiser.model.dfn3.config import sized_config

    config = sized_config(settings.size)
    if settings.lookahead is not None:
        config = dataclasses.replace(config, conv_lookahead=settings.lookahead,
                                     df_lookahead=settings.lookahead)
    if init == "default" or init.endswith(".pt"):
        # The default (or given) weights, with their own size and, unless asked otherwise, their
        # own look-ahead: `load_dfn3` re-indexes the deep-filter taps so the output stays
        # aligned at a new latency (see denoiser/model/dfn3/retarget.py).
        from denoiser.model.weights import checkpoint_config, load_dfn3, weights_path
        path = weights_path(None if init == "default" else init)
        config = checkpoint_config(torch.load(path, map_location="cpu", weights_only=True), path)
        if settings.lookahead is not None:
            config = dataclasses.replace(config, conv_lookahead=settings.lookahead,
                                         df_lookahead=settings.lookahead)
        return load_dfn3(path, config=config).requires_grad_(True).train()
    return DFN3(config)


def _is_gtcrn48(init: str) -> bool:
    from denoiser.model.gtcrn import is_gtcrn48_checkpoint
    from denoiser.model.weights import weights_path
    return is_gtcrn48_checkpoint(torch.load(weights_path(init), map_location="cpu",
                                            weights_only=True))


def _gtcrn48(settings: TrainSettings) -> StreamingModel:
    """The small rung: GTCRN's published weights (`--init gtcrn`) or a GTCRN48 checkpoint,
    with the latency `--lookahead` asks for (1: 20 ms, 0: 10 ms; default 20 ms)."""
    from denoiser.model.gtcrn import GTCRN48Config, load_gtcrn48
    from denoiser.model.weights import weights_path
    from denoiser.training.import_gtcrn import published_gtcrn48
    if settings.init == "gtcrn":
        hops = 3 if settings.lookahead is None else settings.lookahead + 2
        return published_gtcrn48(GTCRN48Config(support_hops=hops))
    if settings.lookahead is not None:
        raise ValueError("--lookahead with a GTCRN48 checkpoint: the framing is the file's")
    return load_gtcrn48(weights_path(settings.init))


@functools.cache
def shipped_teacher(device: str) -> StreamingModel:
    """The original DFN3 (look-ahead 2), frozen: the teacher of distillation runs."""
    from denoiser.model.weights import load_dfn3
    return load_dfn3(device=device).requires_grad_(False).eval()


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Owns one run: its model, optimiser, data and folder."""

    def __init__(self, settings: TrainSettings, *, resume: bool = False,
                 model_factory: Callable[[TrainSettings], StreamingModel] = build_model,
                 split_fn: mixdata.SplitFn | None = None, progress: bool = True) -> None:
        self.out = Path(settings.out)
        if resume:
            saved = self.out / SETTINGS
            if not (self.out / CHECKPOINT).is_file():
                raise FileNotFoundError(f"nothing to resume: {self.out / CHECKPOINT} is missing")
            # The run's own settings win, except how long to go on and how many threads.
            old = json.loads(saved.read_text())
            old.update(steps=settings.steps, threads=settings.threads, device=settings.device)
            settings = TrainSettings.from_dict(old)
        self.settings = s = settings
        self.progress = progress
        torch.set_num_threads(s.threads)
        self.out.mkdir(parents=True, exist_ok=True)

        data_root = Path(s.data)
        self.mixer = mixdata.Mixer(mixdata.scan(data_root, split_fn, "train",
                                                min_speech_bak=s.min_speech_bak),
                                   s.mix_config())
        self.val_mixer = mixdata.Mixer(mixdata.scan(data_root, split_fn, "validation",
                                                    min_speech_bak=s.min_speech_bak),
                                       s.mix_config())
        torch.manual_seed(s.seed)
        random.seed(s.seed)
        self.device = torch.device(s.device)
        self.model = model_factory(s).to(self.device)
        self.model.train()
        self.hop = self.model.hop_size
        self.loss_fn = TrainingLoss(LossConfig(si_sdr_weight=s.si_sdr_weight,
                                               **s.loss)).to(self.device)  # type: ignore[arg-type]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr,
                                           weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: lr_factor(k, s.warmup, s.steps, s.min_lr_ratio))
        self.rng = np.random.default_rng(s.seed)
        self.step = 0
        self._fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        if resume:
            self.load_checkpoint()
            self.log_record({"kind": "resume", "step": self.step, "steps": s.steps})
        (self.out / SETTINGS).write_text(json.dumps(asdict(s), indent=1))

    # -- data

    def _tensors(self, noisy: np.ndarray, clean: np.ndarray) -> tuple[torch.Tensor,
                                                                      torch.Tensor]:
        n = noisy.shape[1] // self.hop * self.hop
        return (torch.from_numpy(noisy[:, :n]).to(self.device),
                torch.from_numpy(clean[:, :n]).to(self.device))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.settings.fixed_batch:
            if self._fixed is None:
                self._fixed = self._tensors(*self.mixer.batch(
                    np.random.default_rng(self.settings.seed), self.settings.batch))
            return self._fixed
        return self._tensors(*self.mixer.batch(self.rng, self.settings.batch))

    def validation_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed set of held-out mixes (same seed every time, never trained on)."""
        if self._val is None:
            rng = np.random.default_rng([self.settings.seed, 1])
            self._val = self._tensors(*self.val_mixer.batch(rng, self.settings.val_size))
        return self._val

    # -- one step

    def _aligned(self, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        return self._aligned_to(self.model(noisy), clean)

    def _aligned_to(self, estimate: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
        """Model output against the target it estimates: output n is input n - latency."""
        lat = self.model.latency_samples
        if lat:
            estimate, clean = estimate[:, lat:], clean[:, :-lat]
        return estimate, clean

    def loss_on(self, noisy: torch.Tensor, clean: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.loss_fn(*self._aligned(noisy, clean)))

    def teacher_target(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The shipped DFN3's estimate of `clean`, aligned with it sample by sample (its last
        `latency` samples, not output yet, are taken from `clean`)."""
        teacher = shipped_teacher(str(self.device))
        with torch.no_grad():
            estimate = teacher(noisy)
        lat = teacher.latency_samples
        return torch.cat([estimate[:, lat:], clean[:, clean.shape[1] - lat:]], dim=1)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                   teacher: torch.Tensor | None = None) -> dict[str, float]:
        """One optimiser step on `batch` (default: the run's own next batch). With `distill`
        set, the loss adds `distill` x the loss against `teacher` (default: computed here)."""
        noisy, clean = batch if batch is not None else self.next_batch()
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        estimate = self.model(noisy)
        parts = self.loss_fn.parts(*self._aligned_to(estimate, clean))
        loss = self.loss_fn.total(parts)
        if self.settings.distill:
            if teacher is None:
                teacher = self.teacher_target(noisy, clean)
            parts["distill"] = self.loss_fn(*self._aligned_to(estimate, teacher))
            loss = loss + self.settings.distill * parts["distill"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {self.step}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record = {"kind": "train", "step": self.step, "loss": float(loss.detach()), "lr": lr,
                  "grad_norm": float(grad_norm),
                  "sec_per_step": round(time.perf_counter() - started, 4)}
        record.update({k: float(v.detach()) for k, v in parts.items()})
        return record

    def validate(self) -> dict[str, object]:
        noisy, clean = self.validation_batch()
        self.model.eval()
        try:
            with torch.no_grad():
                estimate, target = self._aligned(noisy, clean)
                loss = float(self.loss_fn(estimate, target))
                sdr = float(si_sdr(estimate, target).mean())
                lat = self.model.latency_samples
                sdr_in = float(si_sdr(noisy[:, :noisy.shape[1] - lat], target).mean())
        finally:
            self.model.train()
        return {"kind": "val", "step": self.step, "val_loss": loss, "val_si_sdr": sdr,
                "val_si_sdr_noisy": sdr_in}

    # -- checkpoints

    def checkpoint_state(self) -> dict[str, object]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "settings": asdict(self.settings),
        }

    def save_checkpoint(self) -> Path:
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        state = self.checkpoint_state()
        torch.save(state, tmp)
        os.replace(tmp, path)
        if self.settings.keep_checkpoints:  # for averaging (training.export --average)
            shutil.copyfile(path, self.out / f"checkpoint_step{self.step}.pt")
        return path

    def load_checkpoint(self) -> None:
        state = torch.load(self.out / CHECKPOINT, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["data_rng"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.step = int(state["step"])

    # -- the run

    def log_record(self, record: Mapping[str, object]) -> None:
        """Append one JSON line (with the time) to the run's train_log.jsonl."""
        record = {"time": round(time.time(), 3), **record}
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")

    def train(self, until: int | None = None) -> Path | None:
        """Train up to `settings.steps` (or stop early at step `until`, checkpointed, as if
        interrupted); at the end export the weights and return their path."""
        s = self.settings
        stop = s.steps if until is None else min(until, s.steps)
        bar = tqdm(total=s.steps, initial=self.step, disable=not self.progress, unit="step",
                   desc=s.run)
        try:
            while self.step < stop:
                record = self.train_step()
                self.log_record(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                bar.update(1)
                if self.step % s.val_every == 0 or self.step == s.steps:
                    val = self.validate()
                    self.log_record(val)
                    bar.write(json.dumps(val))
                if self.step % s.checkpoint_every == 0 or self.step in (stop, s.steps):
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()  # Ctrl-C: keep everything done so far; --resume goes on
            raise
        finally:
            bar.close()
        if self.step < s.steps:
            return None
        self.model.eval()
        return export_weights(self.model, self.out, asdict(s))
