"""A tiny streaming model (a learnable causal FIR filter with a gain) for smoke runs and tests
of the training loop, where DFN3 would take minutes per step on two CPU cores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from denoiser.model.streaming import State, StreamingModel


class TinyFIRModel(StreamingModel):
    """out[n] = sum_k w[k]·x[n-k]; starts as the identity (a pass-through filter)."""

    def __init__(self, taps: int = 32) -> None:
        super().__init__()
        kernel = torch.zeros(taps)
        kernel[-1] = 1.0  # conv1d correlates: the last tap weighs the newest sample
        self.kernel = nn.Parameter(kernel)
        self.taps = taps

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        return {"tail": torch.zeros(batch, self.taps - 1, device=device, dtype=dtype)}

    def _filter(self, padded: Tensor) -> Tensor:
        return F.conv1d(padded.unsqueeze(1), self.kernel.view(1, 1, -1)).squeeze(1)

    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        padded = torch.cat([state["tail"], hops], dim=1)
        return self._filter(padded), {"tail": padded[:, -(self.taps - 1):]}

    def forward(self, audio: Tensor) -> Tensor:
        if audio.shape[1] % self.hop_size:
            raise ValueError(f"length {audio.shape[1]} is not a multiple of {self.hop_size}")
        return self._filter(F.pad(audio, (self.taps - 1, 0)))
