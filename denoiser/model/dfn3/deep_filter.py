"""The deep-filter operation and the ERB gain, on spectra held as complex tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def deep_filter(frames: Tensor, coefs: Tensor) -> Tensor:
    """Complex FIR over time per bin: out[b, t, f] = sum_o frames[b, t + o, f] * c[b, t, f, o].

    frames [B, T + order - 1, F_df] complex (oldest first); coefs [B, T, F_df, order, 2] real.
    """
    order = coefs.shape[3]
    windows = frames.unfold(1, order, 1)  # [B, T, F_df, order]
    c = torch.view_as_complex(coefs.float().contiguous())
    return (windows * c).sum(dim=-1)


def apply_erb_gains(spec: Tensor, gains: Tensor, erb_expand: Tensor) -> Tensor:
    """Multiply every bin of spec [B, T, F] by its band's gain (gains [B, T, E])."""
    return spec * (gains.float() @ erb_expand)
