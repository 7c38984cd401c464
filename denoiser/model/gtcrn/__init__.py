"""The small rung: GTCRN (MIT) as a batched 48 kHz `StreamingModel` (models/MODEL_CARD.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from denoiser.model.gtcrn.model import GTCRN48, GTCRN48Config

MODEL_NAME = "gtcrn48"  # the checkpoint's "model" field

__all__ = [
    "GTCRN48",
    "MODEL_NAME",
    "GTCRN48Config",
    "is_gtcrn48_checkpoint",
    "load_gtcrn48",
]


def is_gtcrn48_checkpoint(checkpoint: dict[str, object]) -> bool:
    """Whether a loaded checkpoint holds GTCRN48 weights (its "model" field, or the class that
    `denoise-sfu train` recorded in its provenance)."""
    if checkpoint.get("model") == MODEL_NAME:
        return True
    provenance = checkpoint.get("provenance")
    return isinstance(provenance, dict) and str(provenance.get("model_class", "")).endswith(
        ".GTCRN48")


def _config(raw: object, path: Path) -> GTCRN48Config:
    if raw is None:
        return GTCRN48Config()
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'config' must be a dict of GTCRN48Config fields, got {raw!r}")
    known = {f.name for f in dataclasses.fields(GTCRN48Config)}
    try:
        return GTCRN48Config(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad GTCRN48Config: {exc}") from exc


def load_gtcrn48(path: Path, checkpoint: dict[str, object] | None = None,
                 device: torch.device | str = "cpu") -> GTCRN48:
    """GTCRN48 with the weights of `path` (float16 or float32 on disk, float32 in memory), in
    eval mode."""
    if checkpoint is None:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a GTCRN48 checkpoint (no 'state_dict')")
    model = GTCRN48(_config(checkpoint.get("config"), path))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit GTCRN48: {exc}") from exc
    raw = checkpoint.get("provenance")
    model.provenance = dict(raw) if isinstance(raw, dict) else {}
    return model.to(device).eval().requires_grad_(False)
