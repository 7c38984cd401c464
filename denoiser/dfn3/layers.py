"""DFN3's building blocks: grouped linear layers, squeezed GRUs and separable conv blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GroupedLinear(nn.Module):
    """`groups` independent linears over consecutive slices of the last dimension.

    Weight [groups, in/groups, out/groups], as DFN3's einsum `btgi,gih->btgh`.
    """

    def __init__(self, in_features: int, out_features: int, groups: int) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError("features must divide into groups")
        self.groups = groups
        self.weight = nn.Parameter(
            torch.zeros(groups, in_features // groups, out_features // groups))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.groups, self.weight.shape[1]).transpose(0, 1)  # [G, N, I]
        y = torch.bmm(x, self.weight)  # [G, N, H]
        return y.transpose(0, 1).reshape(*lead, -1)


class SqueezedGRU(nn.Module):
    """Grouped linear in (ReLU), a stacked GRU, optional grouped linear out (ReLU).

    `forward(x [B, T, in], h [B, layers, hidden])` returns (y [B, T, out], h): the hidden state
    is batch-first so that it can live in a per-stream state table.
    """

    def __init__(self, in_features: int, hidden: int, layers: int, groups: int,
                 out_features: int | None = None) -> None:
        super().__init__()
        self.linear_in = GroupedLinear(in_features, hidden, groups)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.linear_out = (GroupedLinear(hidden, out_features, groups)
                           if out_features is not None else None)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.relu(self.linear_in(x))
        y, h_new = self.gru(x, h.transpose(0, 1).contiguous())
        if self.linear_out is not None:
            y = torch.relu(self.linear_out(y))
        return y, h_new.transpose(0, 1)


class SeparableConv(nn.Module):
    """Grouped (usually depthwise) conv without bias, then a 1x1 conv with the folded batch-norm
    bias, then ReLU. No time padding: callers prepend the time context themselves."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], groups: int,
                 fstride: int = 1, transposed: bool = False) -> None:
        super().__init__()
        if transposed:
            self.dw: nn.Module = nn.ConvTranspose2d(
                in_ch, out_ch, kernel, stride=(1, fstride), padding=(0, kernel[1] // 2),
                output_padding=(0, fstride - 1), groups=groups, bias=False)
        else:
            self.dw = nn.Conv2d(in_ch, out_ch, kernel, stride=(1, fstride),
                                padding=(0, kernel[1] // 2), groups=groups, bias=False)
        self.pw = nn.Conv2d(out_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.pw(self.dw(x)))
