"""How much noise a model leaves when nobody talks: dev noise recordings alone through it.

    python -m denoiser.eval.noise_floor [--model default|F.pt|module:factory ...] [--seconds 4]

Each dev-split noise recording of the corpus at least 2 s long
(`denoiser.corpus.devset.split_of`: none
was seen in training) is resampled to 48 kHz, cut to `--seconds`, set to -30 dBFS and run
through the model's offline `forward` (which equals its streaming output); the noise reduction
is the input's energy over the output's after the first second, by which the feature
normalisations have settled: a long talker pause. Prints one line per recording and model, the
median and the worst per model, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from denoiser.corpus.devset import corpus_files, load_48k, split_of
from denoiser.model.streaming import StreamingModel

SAMPLE_RATE = 48_000
LEVEL_RMS = 10 ** (-30 / 20)
SETTLE_SECONDS = 1.0
MIN_SECONDS = 2.0
HOP = 480  # the models' hop: `forward` takes whole hops


def dev_noises(seconds: float) -> list[tuple[str, np.ndarray]]:
    """(name, 48 kHz audio at -30 dBFS) of every dev noise recording of MIN_SECONDS or more."""
    out = []
    for path in sorted(corpus_files("noise")):
        if split_of(path) != "dev":
            continue
        x = load_48k(path)[: round(seconds * SAMPLE_RATE)]
        if x.shape[0] < MIN_SECONDS * SAMPLE_RATE or not np.any(x):
            continue
        x = x[: x.shape[0] // HOP * HOP]
        out.append((f"{Path(path).parent.name}/{Path(path).name}",
                    (x * LEVEL_RMS / np.sqrt(np.mean(x**2))).astype(np.float32)))
    return out


def noise_reduction_db(model: StreamingModel, noise: np.ndarray) -> float:
    """Input energy over output energy (dB) after SETTLE_SECONDS, the output aligned."""
    latency = int(model.latency_samples)
    with torch.inference_mode():
        y = model(torch.from_numpy(noise)[None])[0].numpy()[latency:]
    start = round(SETTLE_SECONDS * SAMPLE_RATE)
    x, y = noise[start:y.shape[0]], y[start:]  # output sample i estimates input sample i
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2)
                               / max(np.sum(y.astype(np.float64) ** 2), 1e-20)))


def main(argv: list[str] | None = None) -> None:
    from denoiser.model.weights import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["default"],
                        help="default, a weights file (.pt) or module:factory (several: compared)")
    parser.add_argument("--seconds", type=float, default=4.0, help="noise per recording")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {spec: load_model(spec) for spec in args.model}
    noises = dev_noises(args.seconds)
    figures: dict[str, dict[str, float]] = {spec: {} for spec in models}
    for name, noise in noises:
        for spec, model in models.items():
            figures[spec][name] = round(noise_reduction_db(model, noise), 1)
            print(f"{name:50s} {spec:24s} {figures[spec][name]:6.1f} dB", flush=True)
    summary = {spec: {"median_db": round(float(np.median(list(v.values()))), 1),
                      "min_db": min(v.values()), "recordings": len(v)}
               for spec, v in figures.items()}
    for spec, row in summary.items():
        print(f"{spec}: median {row['median_db']} dB, worst {row['min_db']} dB over "
              f"{row['recordings']} recordings")
    print(json.dumps({"bench": "noise_floor", "summary": summary, "per_recording": figures}))


if __name__ == "__main__":
    main()
