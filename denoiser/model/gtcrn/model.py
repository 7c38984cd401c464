"""`GTCRN48`: the small rung, GTCRN's network as a batched 48 kHz `StreamingModel`.

GTCRN was trained on 16 kHz audio with a 512-point STFT (32 ms window, 16 ms hop). Here it
runs at 48 kHz with our 10 ms hop, without resampling: a 1536-point STFT at 48 kHz has the
same 31.25 Hz bins, so its lowest 257 bins (0-8 kHz), scaled for the window, are the spectrum
the network was trained on. What changes is the framing:

- an asymmetric analysis window (Mauler and Martin, 2011): 1536 samples long like GTCRN's
  own, but it falls to zero within the last `support / 2` samples, and a synthesis window that
  is non-zero only on the last `support` samples, so that the algorithmic latency is
  `support - hop` (20 ms for the shipped support of three hops, 10 ms for two) instead of the
  window length;
- frames every 10 ms instead of 16 ms: the temporal layers see a faster frame rate than they
  were trained at (the shipped weights are GTCRN's own, not yet fine-tuned at this framing;
  models/MODEL_CARD.md).

Above 8 kHz (bins 257-768) the network says nothing; those bins get one gain per frame from
the network's own mask: the mean mask magnitude over 5-8 kHz, within [0, 1]. A narrowband
talker has nothing there to lose, fullband noise is cut as deep as the top of the speech band.

Per-stream state (batch first): the last 1056 input samples, the overlap-add tail and the
network's memory (`GTCRNCore.initial_state`). `step_many` runs all T frames of a call in one
pass of the network (the same code path as training's `forward`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from denoiser.model.gtcrn.network import N_BINS, GTCRNCore, apply_mask
from denoiser.model.streaming import State, StreamingModel

SR = 48_000
HOP = 480
FFT = 1536  # 31.25 Hz bins: bins 0..256 are a 16 kHz 512-point STFT's
HIGH_GAIN_FROM_HZ = 5000.0


@dataclass(frozen=True)
class GTCRN48Config:
    """The framing (saved in the checkpoint)."""

    support_hops: int = 3  # synthesis window length in hops: latency = (support_hops - 1) hops

    def __post_init__(self) -> None:
        if self.support_hops not in (2, 3):
            raise ValueError(f"support_hops must be 2 or 3, not {self.support_hops}")

    @property
    def latency_samples(self) -> int:
        return (self.support_hops - 1) * HOP


def asymmetric_windows(n: int = FFT, hop: int = HOP, support: int = 3 * HOP) -> tuple[Tensor,
                                                                                     Tensor]:
    """(analysis [n], synthesis [n]) windows whose product, overlap-added at `hop`, is 1 and
    whose synthesis is zero before the last `support` samples."""
    fall = support // 2
    k = torch.arange(n, dtype=torch.float64)
    rise = torch.sin(math.pi * k[:n - fall] / (2 * (n - fall)))
    down = torch.sin(math.pi * (k[n - fall:] - (n - 2 * fall)) / (2 * fall))
    analysis = torch.cat([rise, down])
    j = torch.arange(support, dtype=torch.float64)
    product = torch.sin(math.pi * j / support) ** 2 * (2 * hop / support)  # periodic Hann, COLA
    synthesis = torch.zeros(n, dtype=torch.float64)
    synthesis[n - support:] = product / analysis[n - support:].clamp_min(1e-6)
    return analysis.float(), synthesis.float()


class GTCRN48(StreamingModel):
    """GTCRN at 48 kHz in 10 ms hops, batched, with explicit per-stream state."""

    analysis: Tensor  # buffers (registered in __init__), declared for the type checker
    synthesis: Tensor
    provenance: dict[str, object]  # set by the loader: where the weights came from

    traceable = True  # branches only on shapes

    def __init__(self, cfg: GTCRN48Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GTCRN48Config()
        self.sample_rate = SR
        self.hop_size = HOP
        self.support = cfg.support_hops * HOP
        self.latency_samples = cfg.latency_samples
        self.core = GTCRNCore()
        analysis, synthesis = asymmetric_windows(FFT, HOP, self.support)
        self.register_buffer("analysis", analysis, persistent=False)
        self.register_buffer("synthesis", synthesis[FFT - self.support:].clone(),
                             persistent=False)
        # The network was trained on |STFT| of a 512-point sqrt-Hann window at 16 kHz: match a
        # sinusoid's bin magnitude.
        gtcrn_window_sum = float(torch.hann_window(512).sqrt().sum())
        self.spec_scale = gtcrn_window_sum / float(analysis.sum())
        self.high_from = round(HIGH_GAIN_FROM_HZ / (SR / FFT))

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        state = {f"core_{k}": v for k, v in
                 GTCRNCore.initial_state(batch, device, dtype).items()}
        state["past"] = torch.zeros(batch, FFT - HOP, device=device, dtype=dtype)
        state["ola"] = torch.zeros(batch, self.support - HOP, device=device, dtype=dtype)
        return state

    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        return self.step_many(hops, state)

    def step_many(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        if hops.dim() != 2 or hops.shape[1] == 0 or hops.shape[1] % HOP:
            raise ValueError(f"expected hops [B, T*{HOP}], got {tuple(hops.shape)}")
        batch, frames = hops.shape[0], hops.shape[1] // HOP
        signal = torch.cat([state["past"], hops], dim=1)
        windows = signal.unfold(1, FFT, HOP) * self.analysis  # [B, T, FFT]
        spec = torch.view_as_real(torch.fft.rfft(windows, dim=-1))  # [B, T, 769, 2]
        low = spec[:, :, :N_BINS]
        core_state = {k[5:]: v for k, v in state.items() if k.startswith("core_")}
        mask, core_state = self.core(low * self.spec_scale, core_state)
        magnitude = torch.sqrt(mask.pow(2).sum(-1) + 1e-12)  # [B, T, 257]
        high_gain = magnitude[:, :, self.high_from:].mean(-1).clamp(0.0, 1.0)
        enhanced = torch.cat([apply_mask(low, mask),
                              spec[:, :, N_BINS:] * high_gain[:, :, None, None]], dim=2)
        frames_out = torch.fft.irfft(torch.view_as_complex(enhanced.contiguous()), n=FFT, dim=-1)
        segments = frames_out[:, :, FFT - self.support:] * self.synthesis  # [B, T, support]
        total = (frames - 1) * HOP + self.support
        tail = self.support - HOP
        if frames <= 4:  # streaming: a few shifted adds beat F.fold's col2im
            summed = F.pad(torch.cat([state["ola"], segments.new_zeros(batch, HOP)], dim=1)
                           + segments[:, 0], (0, (frames - 1) * HOP))
            for k in range(1, frames):
                summed = summed + F.pad(segments[:, k], (k * HOP, (frames - 1 - k) * HOP))
        else:
            summed = F.fold(segments.transpose(1, 2), output_size=(1, total),
                            kernel_size=(1, self.support), stride=(1, HOP)).reshape(batch, total)
            summed = torch.cat([summed[:, :tail] + state["ola"], summed[:, tail:]], dim=1)
        out = summed[:, :frames * HOP]
        new_state = {f"core_{k}": v for k, v in core_state.items()}
        new_state["past"] = signal[:, signal.shape[1] - (FFT - HOP):]
        new_state["ola"] = summed[:, frames * HOP:]
        return out, new_state

    def forward(self, audio: Tensor) -> Tensor:
        """Whole signals [B, T] from a fresh state: the same pass as streaming, all at once."""
        if audio.dim() != 2 or audio.shape[1] % HOP:
            raise ValueError(f"expected [B, T] with T a multiple of {HOP}, got "
                             f"{tuple(audio.shape)}")
        return self.step_many(audio, self.initial_state(audio.shape[0], audio.device,
                                                        audio.dtype))[0]
