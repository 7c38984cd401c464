"""Server-side speech denoising: streaming models, the batching engine, the worker service.

The names a library user needs are here, imported lazily (PEP 562) so that importing a light
module such as `denoiser.worker.address` does not load torch:

    from denoiser import LocalEngine, DenoisedStream, load_default_model

Runtime packages: `engine`, `stream`, `model`, `bypass`, `worker`. Offline packages, never
imported by serving code (tests/test_layering.py): `corpus`, `eval`, `training`, `bench`.
`denoiser` never imports `sfu`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from denoiser.bypass import BypassDetector
    from denoiser.engine import Engine, EngineError, EngineFull, UnknownStream
    from denoiser.engine.local import LocalEngine
    from denoiser.model.streaming import StreamingModel
    from denoiser.model.weights import load_default_model, load_model
    from denoiser.stream import DenoisedStream, Mode, PassReason

_EXPORTS = {
    "Engine": "denoiser.engine", "EngineError": "denoiser.engine",
    "EngineFull": "denoiser.engine", "UnknownStream": "denoiser.engine",
    "LocalEngine": "denoiser.engine.local", "DenoisedStream": "denoiser.stream",
    "Mode": "denoiser.stream", "PassReason": "denoiser.stream",
    "StreamingModel": "denoiser.model.streaming",
    "load_default_model": "denoiser.model.weights", "load_model": "denoiser.model.weights",
    "BypassDetector": "denoiser.bypass",
}

__all__ = [
    "BypassDetector", "DenoisedStream", "Engine", "EngineError", "EngineFull", "LocalEngine",
    "Mode", "PassReason", "StreamingModel", "UnknownStream", "load_default_model", "load_model",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'denoiser' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
