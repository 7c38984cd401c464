"""`IdentityModel`: a `StreamingModel` that returns its input, for measuring everything but
the model (the worker's host path: decode, gather, scatter, answer; `bench worker --model
identity`).

It keeps one state tensor, a per-stream count of hops seen, so that the engine's gather and
scatter of the state table run as they do for a real model, and a test can see that every
stream's state moved exactly once per hop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from denoiser.model.streaming import State, StreamingModel


class IdentityModel(StreamingModel):
    """Output = input, latency 0; state `hops` [B, 1] counts the hops each stream ran."""

    traceable = False  # nothing to trace: a trace would only add its call overhead

    def __init__(self, hop_size: int = 480, sample_rate: int = 48_000) -> None:
        super().__init__()
        self.hop_size = hop_size
        self.sample_rate = sample_rate
        self.latency_samples = 0

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        return {"hops": torch.zeros(batch, 1, device=device, dtype=dtype)}

    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        return self.step_many(hops, state)

    def step_many(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        if hops.dim() != 2 or hops.shape[1] == 0 or hops.shape[1] % self.hop_size:
            raise ValueError(f"expected hops [B, T*{self.hop_size}], got {tuple(hops.shape)}")
        return hops, {"hops": state["hops"] + hops.shape[1] // self.hop_size}
