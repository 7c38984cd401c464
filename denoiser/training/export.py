"""Writing a trained model in the checkpoint format `denoiser.models.load_dfn3` reads:
`{"state_dict", "provenance", "config"}` (here `config` is the DFN3Config as a dict, so that a
model trained with another look-ahead can be rebuilt; see docs/training.md)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from denoiser.streaming import StreamingModel

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
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(body, tmp)
    os.replace(tmp, path)
    return path


def ship_weights(run_weights: Path, out: Path, note: str = "") -> Path:
    """A run's exported weights as a shipped file: float16 (half the size; the engine computes
    in float32 either way), the run's provenance kept, `note` added."""
    body = torch.load(run_weights, map_location="cpu", weights_only=True)
    body["state_dict"] = {k: v.half() if v.is_floating_point() else v
                          for k, v in body["state_dict"].items()}
    body.setdefault("provenance", {})["shipped"] = note
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(body, out)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="ship a training run's weights (float16)")
    parser.add_argument("run_weights", type=Path, help="a run's dfn3.pt")
    parser.add_argument("out", type=Path, help="e.g. models/dfn3_la1.pt")
    parser.add_argument("--note", default="", help="kept in the file's provenance")
    args = parser.parse_args(argv)
    print(ship_weights(args.run_weights, args.out, args.note))


if __name__ == "__main__":
    main()
