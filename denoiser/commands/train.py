"""`denoise-sfu train`: fine-tune the streaming denoiser on mixes of the shared corpus."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from denoiser.model.dfn3.config import SIZES
from denoiser.training.loop import INITS, TrainSettings

_DEFAULTS = {f.name: f.default for f in fields(TrainSettings)}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune the denoiser (resumable; see docs/training.md)",
        description="Fine-tune the streaming denoiser on on-the-fly mixes (Opus, reverb, "
                    "babble, packet loss...) of the train split of the corpus.")
    p.add_argument("--run", default=_DEFAULTS["run"], help="run name (folder under models/)")
    p.add_argument("--out", default="", help="run folder (default models/<run>)")
    p.add_argument("--data", default=_DEFAULTS["data"], help="corpus folder (clean/, noise/, rir/)")
    p.add_argument("--init", default=_DEFAULTS["init"],
                   help=f"{'|'.join(INITS)} or a weights file (.pt): the default model's "
                        "weights, a fresh network, the tiny test model, or a checkpoint")
    p.add_argument("--size", default="dfn3", choices=sorted(SIZES),
                   help="network size for --init scratch (dfn3 is the published one)")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of a loss against the original DFN3's output (a teacher)")
    p.add_argument("--lookahead", type=int, default=None,
                   help="DFN3 look-ahead in hops (default: the model's own)")
    p.add_argument("--min-speech-bak", type=float, default=None,
                   help="train only on speech whose DNSMOS BAK reaches this (3.5 drops the "
                        "recordings with audible room noise; denoiser/corpus/screen.py)")
    p.add_argument("--pause-share", type=float, default=_DEFAULTS["pause_share"],
                   help="share of mixes in which the talker pauses for 0.5-2 s, leaving noise "
                        "alone (default 0)")
    p.add_argument("--talker-share", type=float, default=_DEFAULTS["talker_share"],
                   help="share of mixes with a competing talker 12-24 dB under the wanted "
                        "voice, on top of the noise (default 0)")
    p.add_argument("--steps", type=int, default=_DEFAULTS["steps"], help="total optimiser steps")
    p.add_argument("--batch", type=int, default=_DEFAULTS["batch"])
    p.add_argument("--seconds", type=float, default=_DEFAULTS["seconds"], help="mix length")
    p.add_argument("--lr", type=float, default=_DEFAULTS["lr"])
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1...")
    p.add_argument("--threads", type=int, default=_DEFAULTS["threads"], help="torch CPU threads")
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    p.add_argument("--val-every", type=int, default=_DEFAULTS["val_every"])
    p.add_argument("--val-size", type=int, default=_DEFAULTS["val_size"])
    p.add_argument("--checkpoint-every", type=int, default=_DEFAULTS["checkpoint_every"])
    p.add_argument("--si-sdr-weight", type=float, default=_DEFAULTS["si_sdr_weight"])
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every checkpoint (checkpoint_step<N>.pt), e.g. to average the last "
                        "ones: python -m denoiser.training.export --average")
    p.add_argument("--fixed-batch", action="store_true", help="overfit one batch (sanity check)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out/--run from its checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from denoiser.training.loop import Trainer

    try:
        settings = TrainSettings(
            run=args.run, out=args.out, data=args.data, init=args.init, steps=args.steps,
            batch=args.batch, seconds=args.seconds, lr=args.lr, threads=args.threads,
            seed=args.seed, val_every=args.val_every, val_size=args.val_size,
            checkpoint_every=args.checkpoint_every, si_sdr_weight=args.si_sdr_weight,
            fixed_batch=args.fixed_batch, lookahead=args.lookahead, size=args.size,
            distill=args.distill, device=args.device,
            min_speech_bak=args.min_speech_bak, pause_share=args.pause_share,
            talker_share=args.talker_share, keep_checkpoints=args.keep_checkpoints)
        trainer = Trainer(settings, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"denoise-sfu train: {exc}", file=sys.stderr)
        return 2
    path = trainer.train()
    print(f"weights: {path}")
    return 0
