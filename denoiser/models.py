"""The shipped models: load them from `models/` (never from the network)."""

from __future__ import annotations

from pathlib import Path

import torch

from denoiser.dfn3 import DFN3, DFN3Config
from denoiser.paths import MODELS_DIR
from denoiser.streaming import StreamingModel

DEFAULT_WEIGHTS = "dfn3.pt"


def load_dfn3(path: Path | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, atten_lim_db: float | None = None) -> DFN3:
    """DFN3 with the weights imported by `python -m denoiser.dfn3.convert`, in eval mode."""
    path = Path(path) if path is not None else MODELS_DIR / DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `python -m denoiser.dfn3.convert` to create it")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = DFN3(DFN3Config(), atten_lim_db=atten_lim_db)
    model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    model.provenance = checkpoint.get("provenance", {})
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_default_model(device: torch.device | str = "cpu") -> StreamingModel:
    """The default denoiser (DFN3 with its original weights) on `device`, ready for `step`."""
    return load_dfn3(device=device)
