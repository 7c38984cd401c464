"""The contract between a denoising model and the engine that batches it across streams.

A `StreamingModel` is causal: it consumes exactly one hop of 48 kHz mono audio per stream per
call and returns one hop, carrying everything it remembers in an explicit state: a dict of
tensors whose first dimension is the batch (one row per stream). The engine keeps a table of
such rows, one slot per live stream, gathers the rows of the streams in a tick, calls `step`
once for the whole batch and scatters the new rows back. When every stream of a tick brought
several hops, it calls `step_many` once for all of them instead.

Output sample `n` of a stream estimates the clean version of input sample
`n - latency_samples`: the algorithmic latency (window minus hop, plus look-ahead) is a
declared constant, and tests measure it with an impulse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


class StreamingModel(nn.Module, ABC):
    """A causal denoiser with explicit per-stream state (batch dimension first)."""

    sample_rate: int = 48_000
    hop_size: int = 480
    latency_samples: int = 0
    # True when `step_many`'s Python control flow depends only on tensor shapes and settings,
    # never on values: then a graph traced once per hop count is the same function, and the CPU
    # engine runs it traced (`denoiser.model.traced`). Leave it False for a model that branches
    # on data (a check like `if x.abs().max() > 1`), which a trace would freeze.
    traceable: bool = False

    @abstractmethod
    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        """A fresh state for `batch` streams: every tensor has `batch` as its first dimension."""

    @abstractmethod
    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        """Denoise one hop per stream: `hops` is [B, hop_size]; returns ([B, hop_size], new state).

        Must not modify `state` in place: the engine scatters the returned rows into its table.
        """

    def step_many(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        """Denoise T consecutive hops per stream: `hops` is [B, T*hop_size]; returns
        ([B, T*hop_size], the state after the last hop).

        Equals calling `step` T times (this default does exactly that). The engine calls it when
        every stream of a tick has T hops waiting (a 20 ms codec frame is two); models override
        it where running T hops in one call costs less than T calls. Like `step`, it must not
        modify `state` in place.
        """
        if hops.dim() != 2 or hops.shape[1] == 0 or hops.shape[1] % self.hop_size:
            raise ValueError(f"expected hops [B, T*{self.hop_size}], got {tuple(hops.shape)}")
        outputs = []
        for hop in hops.split(self.hop_size, dim=1):
            out, state = self.step(hop, state)
            outputs.append(out)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), state

    def forward(self, audio: Tensor) -> Tensor:
        """Offline: denoise whole signals [B, T] (T a multiple of hop_size) by stepping.

        Models may override this with a faster sequence implementation used in training, as
        long as it gives the same output as stepping (tested).
        """
        batch, length = audio.shape
        if length % self.hop_size:
            raise ValueError(f"length {length} is not a multiple of the hop {self.hop_size}")
        state = self.initial_state(batch, audio.device, audio.dtype)
        outputs = []
        for hop in audio.split(self.hop_size, dim=1):
            out, state = self.step(hop, state)
            outputs.append(out)
        return torch.cat(outputs, dim=1)
