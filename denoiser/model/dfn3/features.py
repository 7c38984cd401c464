"""libDF's signal path in torch: STFT with the Vorbis window, ERB bands and the two feature
normalisations, each written for T frames at once with its streaming state passed in and out.

All functions compute in float32 whatever the caller's dtype (FFT sizes like 960 have no fp16
kernels, and the log/EMA features need the range).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def vorbis_window(size: int) -> Tensor:
    """libDF's analysis/synthesis window; w[n]^2 + w[n + size/2]^2 = 1 (Princen-Bradley)."""
    n = torch.arange(size, dtype=torch.float64)
    inner = torch.sin(math.pi * (n + 0.5) / size) ** 2
    return torch.sin(0.5 * math.pi * inner).float()


def _freq2erb(freq_hz: float) -> float:
    return 9.265 * math.log1p(freq_hz / (24.7 * 9.265))


def _erb2freq(n_erb: float) -> float:
    return 24.7 * 9.265 * (math.exp(n_erb / 9.265) - 1.0)


def erb_band_widths(sr: int, fft_size: int, nb_bands: int, min_nb_freqs: int) -> list[int]:
    """Number of FFT bins per ERB band, exactly as libDF's `erb_fb` (sums to fft_size/2+1)."""
    freq_width = sr / fft_size
    erb_low, erb_high = _freq2erb(0.0), _freq2erb(sr / 2)
    step = (erb_high - erb_low) / nb_bands
    widths = [0] * nb_bands
    prev_freq = 0
    freq_over = 0
    for i in range(1, nb_bands + 1):
        fb = round(_erb2freq(erb_low + i * step) / freq_width)
        nb_freqs = fb - prev_freq - freq_over
        if nb_freqs < min_nb_freqs:
            freq_over = min_nb_freqs - nb_freqs
            nb_freqs = min_nb_freqs
        else:
            freq_over = 0
        widths[i - 1] = nb_freqs
        prev_freq = fb
    widths[-1] += 1
    too_large = sum(widths) - (fft_size // 2 + 1)
    if too_large > 0:
        widths[-1] -= too_large
    assert sum(widths) == fft_size // 2 + 1
    return widths


def erb_matrices(widths: list[int]) -> tuple[Tensor, Tensor]:
    """(mean [F, E]: bin power -> band mean power, expand [E, F]: band gain -> every bin)."""
    n_freqs, n_bands = sum(widths), len(widths)
    expand = torch.zeros(n_bands, n_freqs)
    start = 0
    for band, width in enumerate(widths):
        expand[band, start:start + width] = 1.0
        start += width
    mean = (expand / expand.sum(dim=1, keepdim=True)).T.contiguous()
    return mean, expand


def norm_alpha(sr: int, hop_size: int, tau: float) -> float:
    """libDF's `calc_norm_alpha`: exp(-hop/sr/tau) rounded to the first precision below 1."""
    alpha = math.exp(-hop_size / sr / tau)
    precision = 3
    rounded = 1.0
    while rounded >= 1.0:
        rounded = round(alpha * 10**precision) / 10**precision
        precision += 1
    return rounded


def stft_analysis(audio: Tensor, mem: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """Frames of `audio` [B, T*hop] after `mem` [B, hop] -> (spectra [B, T, F] complex, new mem).

    Frame t covers the previous hop and hop t; libDF scales the analysis by hop / fft^2 * 2.
    """
    hop = mem.shape[1]
    fft_size = window.numel()
    signal = torch.cat([mem, audio], dim=1)
    frames = signal.unfold(1, fft_size, hop)  # [B, T, fft]
    spec = torch.fft.rfft(frames * window, dim=-1)
    wnorm = 2.0 * hop / fft_size**2
    return spec * wnorm, signal[:, -hop:]


def stft_synthesis(spec: Tensor, mem: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of `stft_analysis`: spectra [B, T, F] and overlap `mem` [B, hop] -> audio, mem.

    libDF's inverse FFT is unnormalised, so the result is scaled by fft_size.
    """
    batch, hop = mem.shape
    fft_size = window.numel()
    frames = torch.fft.irfft(spec, n=fft_size, dim=-1) * (fft_size * window)  # [B, T, fft]
    first, second = frames[..., :hop], frames[..., hop:]
    overlap = torch.cat([mem.unsqueeze(1), second[:, :-1]], dim=1)
    return (first + overlap).reshape(batch, -1), second[:, -1]


def _ema(values: Tensor, state: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Exponential mean over time: s_t = v_t (1 - alpha) + s_{t-1} alpha; returns all s_t."""
    means = []
    for t in range(values.shape[1]):
        state = values[:, t] * (1.0 - alpha) + state * alpha
        means.append(state)
    return torch.stack(means, dim=1), state


def erb_features(spec: Tensor, erb_mean: Tensor, state: Tensor,
                 alpha: float) -> tuple[Tensor, Tensor]:
    """Band powers in dB, mean-normalised: spec [B, T, F] complex -> ([B, T, E], state [B, E])."""
    power = spec.real.square() + spec.imag.square()
    db = 10.0 * torch.log10(power @ erb_mean + 1e-10)
    means, state = _ema(db, state, alpha)
    return (db - means) / 40.0, state


def unit_norm_features(spec: Tensor, state: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Complex bins divided by the sqrt of their running mean magnitude: [B, T, F_df] complex."""
    means, state = _ema(spec.abs(), state, alpha)
    return spec / means.sqrt(), state
