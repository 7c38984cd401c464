"""Writing a trained model in the checkpoint format `denoiser.model.weights.load_dfn3` reads:
`{"state_dict", "provenance", "config"}` (here `config` is the DFN3Config as a dict, so that a
model trained with another look-ahead can be rebuilt; see docs/training.md)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from denoiser.model.streaming import StreamingModel

WEIGHTS = "dfn3.pt"


def export_weights(model: StreamingModel, out: Path, settings: dict[str, object]) -> Path:
    """Save `model`'s weights (float32) and where they came from as `out/dfn3.pt`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / WEIGHTS
    cfg = getattr(model, "cfg", None)
    body = {
        "state_dict": {k: v.detach().cpu().float() for k, v in model.state_dict().items()},
        "provenance": {
            "trained_by": "denoise-sfu train",
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "latency_samples": model.latency_samples,
            "settings": settings,
        },
        "config": (dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg)
                   and not isinstance(cfg, type) else None),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(body, tmp)
    os.replace(tmp, path)
    return path


def ship_weights(run_weights: Path, out: Path, note: str = "", half: bool = True,
                 parent: Path | None = None) -> Path:
    """A run's exported weights as a shipped file: float16 (half the size; the engine computes
    in float32 either way) unless `half` is off, the run's provenance kept, `note` added, and
    with `parent` (the shipped file the run started from) that file's provenance kept as
    `provenance["parent"]`, so where the first weights came from, and their licence, travel
    with every fine-tune of them."""
    body = torch.load(run_weights, map_location="cpu", weights_only=True)
    if "state_dict" not in body:
        raise ValueError(f"{run_weights} holds no exported weights (a training checkpoint? "
                         "ship it with --average, one checkpoint or several)")
    if half:
        body["state_dict"] = {k: v.half() if v.is_floating_point() else v
                              for k, v in body["state_dict"].items()}
    provenance = body.setdefault("provenance", {})
    provenance["shipped"] = note
    if parent is not None:
        origin = torch.load(parent, map_location="cpu", weights_only=True)
        provenance["parent"] = origin.get("provenance", {})
        if "model" in origin:  # the tag some loaders know a model family by (gtcrn48)
            body.setdefault("model", origin["model"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(body, out)
    return out


def average_checkpoints(checkpoints: list[Path], out: Path) -> Path:
    """The mean of the weights of several checkpoints of one run (`checkpoint.pt` files, kept
    with `--keep-checkpoints`), exported like the run's own weights into the folder `out`.

    Averaging the last checkpoints of a small-batch fine-tune smooths the step-to-step wander
    of its weights (stochastic weight averaging, Izmailov et al. 2018)."""
    from denoiser.training.loop import TrainSettings, build_model

    if not checkpoints:
        raise ValueError("no checkpoints to average")
    states = [torch.load(p, map_location="cpu", weights_only=False) for p in checkpoints]
    for path, state in zip(checkpoints, states, strict=True):
        if not isinstance(state, dict) or not {"model", "settings", "step"} <= set(state):
            raise ValueError(f"{path}: not a training checkpoint (model, settings, step)")
    runs = {(st["settings"].get("run"), st["settings"].get("init")) for st in states}
    if len(runs) != 1:
        raise ValueError(f"checkpoints of different runs: {sorted(map(str, runs))}")
    settings = TrainSettings.from_dict(states[0]["settings"])
    model = build_model(settings)
    mean = {k: (sum(st["model"][k].float() for st in states) / len(states)
                if v.is_floating_point() else v) for k, v in states[0]["model"].items()}
    model.load_state_dict(mean)
    steps = [int(st["step"]) for st in states]
    return export_weights(model.eval(), out, {**asdict(settings), "averaged_steps": steps})


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="ship a training run's weights (float16)")
    parser.add_argument("run_weights", type=Path, nargs="+",
                        help="a run's dfn3.pt, or with --average several of its checkpoints")
    parser.add_argument("out", type=Path, help="e.g. models/dfn3_la1.pt")
    parser.add_argument("--average", action="store_true",
                        help="ship the mean of the given checkpoints (--keep-checkpoints)")
    parser.add_argument("--note", default="", help="kept in the file's provenance")
    parser.add_argument("--float32", action="store_true",
                        help="keep float32 (a small network: the file is what was measured)")
    parser.add_argument("--parent", type=Path, default=None,
                        help="the shipped file the run started from: its provenance is kept")
    args = parser.parse_args(argv)
    options = {"note": args.note, "half": not args.float32, "parent": args.parent}
    if not args.average:
        if len(args.run_weights) != 1:
            parser.error("several inputs need --average")
        try:
            print(ship_weights(args.run_weights[0], args.out, **options))
        except ValueError as exc:
            parser.error(str(exc))
        return
    with tempfile.TemporaryDirectory() as tmp:
        averaged = average_checkpoints(args.run_weights, Path(tmp))
        print(ship_weights(averaged, args.out, **options))


if __name__ == "__main__":
    main()
