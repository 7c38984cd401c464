"""Replay the bypass over cached model output: the `auto` figures without running the model again.

In mode `auto` with `keep_warm` and no deadline (how the evaluation runs), the engine gets every
hop of a stream whatever the detector says, so its answers are exactly what it gives in mode
`on`. `ReplayEngine` hands back a stream's cached engine output hop by hop; a `DenoisedStream`
over it then makes the very output the full pipeline makes (the routing, the look-ahead, the
crossfades are the real code), and a change to the detector can be judged on every clip in a
fraction of the time. `OnCache` keeps each clip's full engine output (before alignment) in a
folder, keyed by the clip's audio and the model's weights, so that it is computed once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from denoiser.engine import Engine, UnknownStream, validate_hops


class ReplayEngine(Engine):
    """An engine that answers each stream with its cached output, in order."""

    def __init__(self, outputs: dict[str, np.ndarray], sample_rate: int, hop_size: int,
                 latency_samples: int) -> None:
        self.sample_rate, self.hop_size = sample_rate, hop_size
        self.latency_samples = latency_samples
        self._outputs = outputs
        self._pos: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def open_stream(self, stream_id: str) -> None:
        if stream_id not in self._outputs:
            raise UnknownStream(f"no cached output for {stream_id}")
        self._pos[stream_id] = 0

    def close_stream(self, stream_id: str) -> None:
        self._pos.pop(stream_id, None)

    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        validate_hops(samples, self.hop_size)
        if stream_id not in self._pos:
            raise UnknownStream(stream_id)
        k = self._pos[stream_id]
        self._pos[stream_id] = k + samples.size
        out = self._outputs[stream_id][k : k + samples.size]
        if out.size != samples.size:
            raise UnknownStream(f"{stream_id}: cached output ends at {k}")
        return out


class OnCache:
    """Full engine outputs of clips in mode `on`, as .npy files in `folder`."""

    def __init__(self, folder: Path, model_tag: str) -> None:
        self.folder = folder
        self.model_tag = model_tag
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, audio: np.ndarray) -> Path:
        h = hashlib.sha1(self.model_tag.encode())
        h.update(np.ascontiguousarray(audio, np.float32).tobytes())
        return self.folder / f"{h.hexdigest()[:20]}.npy"

    def get(self, audio: np.ndarray) -> np.ndarray | None:
        p = self.path(audio)
        return np.load(p) if p.is_file() else None

    def put(self, audio: np.ndarray, full: np.ndarray) -> None:
        np.save(self.path(audio), np.asarray(full, np.float32))
