"""DFN3's building blocks in channels-last layout ([B, T, F, C]).

The convolutions of DFN3 are depthwise (1x3) over frequency followed by 1x1 pointwise convs;
on CPU torch runs grouped convs as one small conv per group, so here they are written as
shifted multiply-adds plus one matmul. The parameters keep the torch Conv2d shapes of the
original (and of the ONNX export), so weights load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def derived(owner: nn.Module, name: str, params: tuple[Tensor, ...],
            build: Callable[[], Tensor]) -> Tensor:
    """A matrix computed from parameters (a fold of two convs, a reordering), cached on `owner`
    and rebuilt only when one of `params` changes (an optimiser step or load_state_dict bumps
    its version, `.to()` moves its storage). When autograd records through the parameters it
    is rebuilt every call so that gradients flow (training)."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return build()
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = owner.__dict__.setdefault("_derived_cache", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        value = build()
    cache[name] = (key, value)
    return value


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
            torch.empty(groups, in_features // groups, out_features // groups))
        # nn.Linear's default per group (DFN's kaiming_uniform, a=sqrt(5)); a zero start would
        # leave every ReLU after it dead, so a network trained from scratch never learns.
        bound = 1.0 / math.sqrt(in_features // groups)
        nn.init.uniform_(self.weight, -bound, bound)

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
        x = self.linear_in(x).relu_()
        if x.shape[1] == 1 and not torch.is_grad_enabled():
            y, h_new = self._step(x[:, 0], h)  # streaming inference: no layout shuffles
        elif x.shape[1] <= 8 and not torch.is_grad_enabled():
            # A few frames in inference (a 20 ms Opus frame is 2): stepping beats the sequence
            # GRU's layout shuffles on CPU.
            ys = []
            for t in range(x.shape[1]):
                y_t, h = self._step(x[:, t], h)
                ys.append(y_t)
            y, h_new = torch.cat(ys, 1), h
        else:
            y, h_new = self.gru(x, h.transpose(0, 1).contiguous())
            h_new = h_new.transpose(0, 1)
        if self.linear_out is not None:
            y = self.linear_out(y).relu_()
        return y, h_new

    def _step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One time step of the stacked GRU on x [B, I], h [B, layers, H] (torch's equations,
        gates r, z, n; in-place on this step's fresh tensors, so no autograd)."""
        hidden = h.shape[-1]
        h_new = torch.empty_like(h)
        for layer in range(h.shape[1]):
            w_ih, w_hh, b_ih, b_hh = (getattr(self.gru, f"{name}_l{layer}") for name in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            h_prev = h[:, layer]
            gi = torch.addmm(b_ih, x, w_ih.T)
            gh = torch.addmm(b_hh, h_prev, w_hh.T)
            rz = gi[:, :2 * hidden].add_(gh[:, :2 * hidden]).sigmoid_()
            n = gh[:, 2 * hidden:].mul_(rz[:, :hidden]).add_(gi[:, 2 * hidden:]).tanh_()
            x = torch.lerp(n, h_prev, rz[:, hidden:], out=h_new[:, layer])  # n + z (h - n)
        return x[:, None], h_new


def depthwise_freq(x: Tensor, weight: Tensor, stride: int = 1) -> Tensor:
    """Depthwise conv over frequency, kernel 3, padding 1: x [B, T, F, C], weight [C, 1, 1, 3].

    The centre tap makes the output; the side taps are added into slices (no padded copy)."""
    f_in = x.shape[2]
    f_out = (f_in - 1) // stride + 1
    w = weight[:, 0, 0, :]  # [C, 3]
    y = x[:, :, 0:stride * (f_out - 1) + 1:stride] * w[:, 1]
    n_right = (f_in - 2) // stride + 1 if f_in > 1 else 0  # outputs with a right neighbour
    if n_right:
        y[:, :, :n_right].addcmul_(x[:, :, 1:stride * (n_right - 1) + 2:stride], w[:, 2])
    if f_out > 1:
        left = x[:, :, stride - 1:stride * (f_out - 2) + stride:stride]
        y[:, :, 1:].addcmul_(left, w[:, 0])
    return y


def depthwise_freq_transposed(x: Tensor, weight: Tensor) -> Tensor:
    """Depthwise transposed conv over frequency: kernel 3, stride 2, padding 1, output padding 1
    (doubles F). Output 2j is w1 x[j]; output 2j+1 is w2 x[j] + w0 x[j+1]."""
    b, t, f, c = x.shape
    w = weight[:, 0, 0, :]  # [C, 3]
    y = torch.stack([x * w[:, 1], x * w[:, 2]], dim=3)  # [B, T, F, 2, C]
    y[:, :, :-1, 1].addcmul_(x[:, :, 1:], w[:, 0])
    return y.view(b, t, 2 * f, c)


class SeparableConv(nn.Module):
    """Depthwise (1x3) conv over frequency without bias, then a 1x1 conv with the folded
    batch-norm bias, then ReLU; `transposed` doubles the frequency axis instead."""

    def __init__(self, channels: int, fstride: int = 1, transposed: bool = False) -> None:
        super().__init__()
        if transposed:
            self.dw: nn.Conv2d | nn.ConvTranspose2d = nn.ConvTranspose2d(
                channels, channels, (1, 3), stride=(1, 2), padding=(0, 1),
                output_padding=(0, 1), groups=channels, bias=False)
        else:
            self.dw = nn.Conv2d(channels, channels, (1, 3), stride=(1, fstride),
                                padding=(0, 1), groups=channels, bias=False)
        self.pw = nn.Conv2d(channels, channels, 1)
        self.fstride = fstride
        self.transposed = transposed

    def forward(self, x: Tensor) -> Tensor:
        if self.transposed:
            y = depthwise_freq_transposed(x, self.dw.weight)
        else:
            y = depthwise_freq(x, self.dw.weight, self.fstride)
        return pointwise(y, self.pw).relu_()


def bias_of(conv: nn.Conv2d) -> Tensor:
    """The conv's bias (DFN3's convs that fold a batch norm always have one)."""
    if conv.bias is None:
        raise ValueError("this convolution was built without a bias")
    return conv.bias


def pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 Conv2d applied to channels-last x as a matmul."""
    return F.linear(x, conv.weight[:, :, 0, 0], conv.bias)


def channel_scale(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A depthwise 1x1 Conv2d (per-channel scale and bias) on channels-last x."""
    return torch.addcmul(bias_of(conv), x, conv.weight[:, 0, 0, 0])


def conv_patches(x: Tensor, kt: int, kf: int) -> Tensor:
    """x [B, kt-1+T, F, C] (time context included) -> [B, T, F, kf*kt*C + 1]: for each output
    frame and bin the (kt x kf) patch, frequency zero-padded to keep F, ordered (freq tap, time
    tap, channel), then a constant 1 so that a bias row in the weight matrix adds the bias
    inside the matmul. Built with one concatenation of shifted views (no 6-d strided copy)."""
    b, _, f, c = x.shape
    win = x.unfold(1, kt, 1)  # [B, T, F, C, kt]
    t = win.shape[1]
    win = F.pad(win.transpose(-1, -2).reshape(b, t, f, kt * c), (0, 0, kf // 2, kf // 2))
    ones = win.new_ones(1, 1, 1, 1).expand(b, t, f, 1)
    return torch.cat([win[:, :, k:k + f] for k in range(kf)] + [ones], dim=-1)


def conv_patch_matrix(weight: Tensor, bias: Tensor) -> Tensor:
    """A dense conv weight [O, C, kt, kf] and bias [O] as the [kf*kt*C + 1, O] matrix that
    multiplies `conv_patches`."""
    o = weight.shape[0]
    return torch.cat([weight.permute(3, 2, 1, 0).reshape(-1, o), bias[None]], dim=0)


class DepthwisePointwise(nn.Module):
    """A grouped conv `dw` then a 1x1 conv `pw`: a named pair, so the weights keep DFN3's
    names (`df_conv0.dw.weight`, ...) and the type checker knows both are convolutions."""

    def __init__(self, dw: nn.Conv2d, pw: nn.Conv2d) -> None:
        super().__init__()
        self.dw = dw
        self.pw = pw
