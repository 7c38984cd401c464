"""Small real streaming models for the engine and stream tests (CI stays fast on them).

`TinyConvGRU` is a causal strided conv + GRU mask estimator with random weights: enough
state and nonlinearity that any mix-up of rows, slots or hop order changes the output.
`GainModel` multiplies the delayed input by a constant: a denoiser whose output is known,
for tests of crossfades and alignment. Both delay their output by `delay` samples (0..hop).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from denoiser.engine import Engine
from denoiser.model.streaming import State, StreamingModel

HOP = 480


def audio(seed: int, hops: int) -> np.ndarray:
    """`hops` hops of reproducible noise at speech level."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(hops * HOP) * 0.1).astype(np.float32)


async def feed(engine: Engine, sid: str, x: np.ndarray, chunk_hops: int = 1) -> np.ndarray:
    """Send `x` through `engine` as stream `sid`, `chunk_hops` hops per request, in order."""
    outs = []
    for i in range(0, x.size, chunk_hops * HOP):
        outs.append(await engine.process(sid, x[i:i + chunk_hops * HOP]))
    return np.concatenate(outs)


def offline(model: StreamingModel, x: np.ndarray) -> np.ndarray:
    """What `model` outputs for the whole of `x`, run offline (the reference for engines)."""
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None])[0].numpy()


class _Delayed(StreamingModel):
    """Keeps the previous hop so the output can be the input delayed by `delay` samples."""

    def __init__(self, delay: int) -> None:
        super().__init__()
        if not 0 <= delay <= HOP:
            raise ValueError("delay must be within one hop")
        self.latency_samples = delay

    def _window(self, hops: Tensor, state: State) -> tuple[Tensor, Tensor]:
        window = torch.cat([state["prev"], hops], dim=1)  # [B, 2*hop]
        delayed = window[:, HOP - self.latency_samples: 2 * HOP - self.latency_samples]
        return window, delayed


class TinyConvGRU(_Delayed):
    """Causal conv (kernel 2 hops, stride 1 hop) -> GRU -> per-sample gain on the delayed hop."""

    def __init__(self, delay: int = 240, hidden: int = 24, seed: int = 0) -> None:
        super().__init__(delay)
        gen = torch.Generator().manual_seed(seed)
        self.hidden = hidden
        self.conv = nn.Conv1d(1, 16, kernel_size=2 * HOP, stride=HOP)
        self.gru = nn.GRUCell(16, hidden)
        self.mask = nn.Linear(hidden, HOP)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        return {"prev": torch.zeros(batch, HOP, device=device, dtype=dtype),
                "h": torch.zeros(batch, self.hidden, device=device, dtype=dtype)}

    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        window, delayed = self._window(hops, state)
        feats = torch.tanh(self.conv(window.unsqueeze(1)).squeeze(-1))
        h = self.gru(feats * 4.0, state["h"])
        gain = torch.sigmoid(self.mask(h))
        return delayed * gain, {"prev": hops, "h": h}


class GainModel(_Delayed):
    """Output = gain x input delayed by `delay` samples (a denoiser with a known answer)."""

    def __init__(self, delay: int = 240, gain: float = 0.0) -> None:
        super().__init__(delay)
        self.gain = gain

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        return {"prev": torch.zeros(batch, HOP, device=device, dtype=dtype)}

    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        _, delayed = self._window(hops, state)
        return delayed * self.gain, {"prev": hops}


def make_tiny() -> TinyConvGRU:
    """Factory used by the CLI tests (`--model support.models:make_tiny`)."""
    return TinyConvGRU()


def make_gain() -> GainModel:
    """Factory used by the CLI tests: half gain, half-hop latency (a known answer)."""
    return GainModel(delay=240, gain=0.5)
