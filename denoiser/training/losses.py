"""Training losses: DeepFilterNet's multi-resolution spectral loss, plus optional SI-SDR.

The spectral loss compares magnitude-compressed spectra (|X|^gamma, gamma = 0.3, as DFN3 does),
both as magnitudes and as complex values that keep the phase, at several STFT resolutions so
that neither time nor frequency resolution dominates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def _compressed_stft(x: Tensor, n_fft: int, window: Tensor, gamma: float) -> Tensor:
    spec = torch.stft(x, n_fft=n_fft, hop_length=n_fft // 4, window=window, center=True,
                      return_complex=True)
    mag = spec.abs().clamp_min(1e-12)
    return spec * (mag.pow(gamma) / mag)  # |X|^gamma with X's phase


class MultiResSpecLoss(nn.Module):
    """sum over resolutions of f_mag·MSE(|Y|^g, |S|^g) + f_complex·MSE(Y^g, S^g)."""

    def __init__(self, fft_sizes: Sequence[int] = (256, 512, 1024, 2048), gamma: float = 0.3,
                 factor: float = 1.0, factor_complex: float = 1.0) -> None:
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        self.gamma = gamma
        self.factor = factor
        self.factor_complex = factor_complex
        for n in self.fft_sizes:
            self.register_buffer(f"window{n}", torch.hann_window(n), persistent=False)

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        if estimate.shape != target.shape:
            raise ValueError(f"shapes differ: {tuple(estimate.shape)} vs {tuple(target.shape)}")
        loss = estimate.new_zeros(())
        for n in self.fft_sizes:
            window = getattr(self, f"window{n}")
            y = _compressed_stft(estimate, n, window, self.gamma)
            s = _compressed_stft(target, n, window, self.gamma)
            loss = loss + self.factor * (y.abs() - s.abs()).square().mean()
            if self.factor_complex:
                loss = loss + self.factor_complex * torch.view_as_real(y - s).square().mean()
        return loss


def si_sdr(estimate: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB per row of [B, T]."""
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    target = target - target.mean(dim=-1, keepdim=True)
    scale = (estimate * target).sum(-1, keepdim=True) / (target.square().sum(-1, keepdim=True)
                                                         + eps)
    projection = scale * target
    noise = estimate - projection
    return 10 * torch.log10(projection.square().sum(-1) / (noise.square().sum(-1) + eps) + eps)


@dataclass(frozen=True)
class LossConfig:
    fft_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    gamma: float = 0.3
    factor: float = 1.0
    factor_complex: float = 1.0
    si_sdr_weight: float = 0.0  # > 0 adds -weight·SI-SDR/100 (dB scaled to about unit size)


class TrainingLoss(nn.Module):
    """The loss the loop minimises; `parts` returns each term for logging."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()
        c = self.config
        self.spectral = MultiResSpecLoss(c.fft_sizes, c.gamma, c.factor, c.factor_complex)

    def parts(self, estimate: Tensor, target: Tensor) -> dict[str, Tensor]:
        out = {"spectral": self.spectral(estimate, target)}
        if self.config.si_sdr_weight:
            out["si_sdr"] = si_sdr(estimate, target).mean()
        return out

    def total(self, parts: dict[str, Tensor]) -> Tensor:
        loss = parts["spectral"]
        if "si_sdr" in parts:
            loss = loss - self.config.si_sdr_weight * parts["si_sdr"] / 100
        return loss

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        return self.total(self.parts(estimate, target))
