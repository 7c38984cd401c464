"""Train several runs on the same batches in one process, against a wall-clock budget.

    python -m denoiser.training.together PLAN.json --budget 420 --workers 15 --device cuda

For a short lease of a GPU box: one data pipeline (`--workers` processes drawing mixes, the
expensive part), one device, every run of the plan stepping on each batch (and, for runs with
`distill`, on one shared teacher output). The runs' learning-rate schedules are stretched to
the budget: after `--probe` steps the step rate is measured and each run's `steps` set to what
the remaining time allows. At the end every run is validated, checkpointed and exported as a
normal `denoise-sfu train` run folder (settings.json, train_log.jsonl, dfn3.pt), so it
resumes with `denoise-sfu train --resume`.

PLAN.json: {"batch": 32, "seconds": 3.0, "runs": [{TrainSettings fields}, ...]}; `data`,
`device`, `seed` and `threads` of the command line apply to every run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from denoiser.training import data as mixdata
from denoiser.training.export import export_weights
from denoiser.training.loop import Trainer, TrainSettings

PLAN_DATA_KEYS = ("min_speech_bak", "pause_share", "talker_share")


class MixStream(IterableDataset):
    """Endless batches of (noisy, clean) from the train split; each worker has its own seed."""

    def __init__(self, data: Path, batch: int, seed: int, hop: int, mix: mixdata.MixConfig,
                 min_speech_bak: float | None = None) -> None:
        super().__init__()
        self.data, self.batch, self.seed, self.hop = data, batch, seed, hop
        self.mix, self.min_speech_bak = mix, min_speech_bak

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)
        mixer = mixdata.Mixer(mixdata.scan(self.data, None, "train",
                                           min_speech_bak=self.min_speech_bak),
                              self.mix)
        rng = np.random.default_rng([self.seed, 7, worker])
        while True:
            noisy, clean = mixer.batch(rng, self.batch)
            n = noisy.shape[1] // self.hop * self.hop
            yield torch.from_numpy(noisy[:, :n]), torch.from_numpy(clean[:, :n])


def build_trainers(plan: dict, args: argparse.Namespace) -> list[Trainer]:
    trainers = []
    for run in plan["runs"]:
        # The data keys are the plan's (one stream of mixes feeds every run): each run's
        # settings record them, and its validation mixes are drawn the same way.
        data_keys = {k: plan[k] for k in PLAN_DATA_KEYS if k in plan}
        settings = TrainSettings.from_dict({
            **run, **data_keys, "batch": plan["batch"], "seconds": plan["seconds"],
            "data": str(args.data),
            "device": args.device, "seed": args.seed, "threads": args.threads,
            "out": str(args.out / run["run"])})
        trainers.append(Trainer(settings, progress=False))
    return trainers


def export(trainer: Trainer) -> Path:
    """The run's weights as they stand (also mid-run: a lease can end before the budget)."""
    trainer.model.eval()
    try:
        return export_weights(trainer.model, trainer.out, asdict(trainer.settings))
    finally:
        trainer.model.train()


def train_together(trainers: list[Trainer], batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                   budget: float, probe: int, device: torch.device,
                   export_every: float = 120.0) -> None:
    """Step every run on each batch until `budget` seconds pass or every run is done."""
    started = time.monotonic()
    deadline = started + budget
    next_export = started + export_every
    step = 0
    probe_start = started
    while time.monotonic() < deadline and any(t.step < t.settings.steps for t in trainers):
        noisy, clean = (x.to(device, non_blocking=True) for x in next(batches))
        teacher = None
        if any(t.settings.distill for t in trainers):
            teacher = trainers[0].teacher_target(noisy, clean)
        for t in trainers:
            if t.step < t.settings.steps:
                t.log_record(t.train_step((noisy, clean), teacher))
                if t.step % t.settings.val_every == 0:
                    val = t.validate()
                    t.log_record(val)
                    print(t.settings.run, json.dumps(val), flush=True)
        step += 1
        if step == probe // 3:
            probe_start = time.monotonic()  # the first steps (allocator, cuDNN plans) are slow
        if step == probe:  # stretch each schedule to the time left
            rate = (step - probe // 3) / (time.monotonic() - probe_start)
            left = int(rate * (deadline - time.monotonic()) * 0.97)
            for t in trainers:
                t.settings.steps = t.step + left
                t.log_record({"kind": "schedule", "steps": t.settings.steps,
                              "steps_per_sec": round(rate, 3)})
            print(f"{rate:.2f} steps/s: {left} more steps per run", flush=True)
        if time.monotonic() >= next_export:
            next_export += export_every
            for t in trainers:
                export(t)
        if step % 50 == 0:
            print(f"step {step} ({time.monotonic() - started:.0f} s) " + " ".join(
                f"{t.settings.run}={t.step}" for t in trainers), flush=True)


def finish(trainer: Trainer) -> Path:
    """End a run where it stands: final validation, checkpoint, exported weights."""
    trainer.settings.steps = trainer.step
    val = trainer.validate()
    trainer.log_record(val)
    print(trainer.settings.run, json.dumps(val), flush=True)
    trainer.save_checkpoint()
    (trainer.out / "settings.json").write_text(json.dumps(asdict(trainer.settings), indent=1))
    return export(trainer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="parent folder of the runs")
    parser.add_argument("--budget", type=float, required=True, help="seconds of training")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe", type=int, default=30,
                        help="steps after which the rate is measured and schedules stretched")
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    trainers = build_trainers(plan, args)
    hop = trainers[0].hop
    data = trainers[0].settings  # the plan's data keys, as every run's settings hold them
    stream = MixStream(args.data, plan["batch"], args.seed, hop, data.mix_config(),
                       data.min_speech_bak)
    loader = DataLoader(stream,
                        batch_size=None, num_workers=args.workers,
                        pin_memory=device.type == "cuda",
                        prefetch_factor=4 if args.workers else None,
                        persistent_workers=args.workers > 0)
    batches = iter(loader)
    print(f"runs: {[t.settings.run for t in trainers]}, first batch...", flush=True)
    first = next(batches)
    print(f"batch {tuple(first[0].shape)} ready", flush=True)
    try:
        train_together(trainers, batches, args.budget, args.probe, device)
    finally:
        for t in trainers:
            print("exported", finish(t), flush=True)


if __name__ == "__main__":
    main()
