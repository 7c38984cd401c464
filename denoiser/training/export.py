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
