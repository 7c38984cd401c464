"""GTCRN's network (Rong et al., "GTCRN: A Speech Enhancement Model Requiring Ultralow
Computational Resources", ICASSP 2024; github.com/Xiaobin-Rong/gtcrn, MIT), batch first, with
every piece of memory explicit so one call runs any number of frames from a given state.

The network maps the 257-bin spectrum of a 512-point STFT at 16 kHz to a complex ratio mask
of the same bins. Its memory across frames: the time context of the six dilated depthwise
convolutions (2, 4 and 10 past frames, encoder and decoder), the hidden states of the six
temporal-attention GRUs and of the two inter-frame (time) GRUs of the dual-path blocks. The
intra-frame GRUs run across frequency inside one frame and keep nothing.

`forward(spec, state)` with T frames equals T calls with one frame each (tested): the time
convolutions concatenate the cached frames in front of the new ones, the GRUs start from the
cached hidden states. Batch norms are per-channel affine maps (their inference form).

Why it is written the way it is (the parameters keep the shapes of torch's own layers, so the
published weights load unchanged): activations stay channels-last, [B, T, F, C], so that every
convolution is one matrix product over all streams, frames and frequencies (the tiny
convolutions of this network ran 10x slower through torch's conv kernels), and the grouped and
bidirectional GRUs of a layer run as ONE recurrence with block-diagonal weights (the forward
and backward passes across frequency step together), a few tensor operations per step for all
of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_BINS = 257  # 512-point FFT at 16 kHz
N_LOW = 65  # bins kept as they are; the rest go through 64 ERB bands
N_ERB = 64
WIDTH = 33  # frequency positions after the two strided encoder convolutions
CHANNELS = 16
DILATIONS = (1, 2, 5)  # of the encoder's temporal blocks; the decoder's run 5, 2, 1
CONTEXT = tuple(2 * d for d in DILATIONS)  # past frames each temporal conv needs


def erb_filters(n_low: int = N_LOW, n_erb: int = N_ERB, nfft: int = 512,
                high_hz: float = 8000.0, fs: int = 16000) -> Tensor:
    """GTCRN's triangular ERB filterbank over the bins above `n_low` ([n_erb, bins - n_low])."""
    def hz2erb(f: np.ndarray | float) -> np.ndarray:
        return 21.4 * np.log10(0.00437 * np.asarray(f) + 1)

    def erb2hz(e: np.ndarray) -> np.ndarray:
        return (10 ** (e / 21.4) - 1) / 0.00437

    points = np.linspace(hz2erb(n_low / nfft * fs), hz2erb(high_hz), n_erb)
    bins = np.round(erb2hz(points) / fs * nfft).astype(np.int32)
    filt = np.zeros([n_erb, nfft // 2 + 1], dtype=np.float32)
    filt[0, bins[0]:bins[1]] = ((bins[1] - np.arange(bins[0], bins[1]) + 1e-12)
                                / (bins[1] - bins[0] + 1e-12))
    for i in range(n_erb - 2):
        filt[i + 1, bins[i]:bins[i + 1]] = ((np.arange(bins[i], bins[i + 1]) - bins[i] + 1e-12)
                                            / (bins[i + 1] - bins[i] + 1e-12))
        filt[i + 1, bins[i + 1]:bins[i + 2]] = (
            (bins[i + 2] - np.arange(bins[i + 1], bins[i + 2]) + 1e-12)
            / (bins[i + 2] - bins[i + 1] + 1e-12))
    filt[-1, bins[-2]:bins[-1] + 1] = 1 - filt[-2, bins[-2]:bins[-1] + 1]
    return torch.from_numpy(np.abs(filt[:, n_low:]))


def sfe(x: Tensor) -> Tensor:
    """Subband feature extraction: each bin with its two neighbours as channels
    ([B, T, F, C] -> [B, T, F, 3C]). Channel j*C + c is channel c of bin f + j - 1; GTCRN's
    nn.Unfold orders them c*3 + j, which `sfe_weight` accounts for in the next layer's weights
    (contiguous runs of C values copy faster than runs of one)."""
    f = x.shape[2]
    padded = F.pad(x, (0, 0, 1, 1))
    return torch.cat([padded[:, :, j:j + f] for j in range(3)], dim=-1)


def sfe_weight(weight: Tensor, channels: int) -> Tensor:
    """A layer's weight [Cout, C*3 (c-major), ...] re-ordered for `sfe`'s j-major channels."""
    cout, rest = weight.shape[0], weight.shape[2:]
    return weight.reshape(cout, channels, 3, *rest).transpose(1, 2).reshape(cout, 3 * channels,
                                                                            *rest)


def freq_conv(x: Tensor, weight: Tensor, bias: Tensor, stride: int, groups: int) -> Tensor:
    """A Conv2d with kernel (1, k) over frequency, padding k // 2, channels-last:
    x [B, T, F, Cin], weight [Cout, Cin / groups, 1, k] -> [B, T, F', Cout].

    A [B, T, F, C] tensor seen as [B, C, T, F] is in torch's channels-last memory format,
    for which oneDNN has fast small-channel kernels; the result comes back in that format,
    so both permutes are free views."""
    k = weight.shape[-1]
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=(1, stride), padding=(0, k // 2),
                 groups=groups)
    return y.permute(0, 2, 3, 1)


def freq_deconv(x: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    """A ConvTranspose2d with kernel (1, k), stride (1, 2), padding k // 2, channels-last:
    x [B, T, F, Cin], weight [Cin, Cout / groups, 1, k] -> [B, T, 2F - 1, Cout]."""
    k = weight.shape[-1]
    y = F.conv_transpose2d(x.permute(0, 3, 1, 2), weight, bias, stride=(1, 2),
                           padding=(0, k // 2), groups=groups)
    return y.permute(0, 2, 3, 1)


def derived(module: nn.Module, make: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Weights `make` computes from `module`'s parameters (folded batch norms, fused GRU
    matrices). While no gradient is recorded they are made once and kept as long as the
    parameters are the same tensors at the same version (`load_state_dict` and optimiser steps
    bump it), so an inference step pays none of these small operations (a traced graph holds
    them as constants); in training they are made on every call, on the autograd graph."""
    params = list(module.parameters())
    if (torch.is_grad_enabled() and any(p.requires_grad for p in params)) or any(
            p.is_inference() for p in params):  # inference tensors keep no version
        return make()
    key = tuple((p.data_ptr(), p._version) for p in params)
    kept = module.__dict__.get("_derived")
    if kept is not None and kept[0] == key:
        return kept[1]
    value = tuple(t.detach() for t in make())
    module.__dict__["_derived"] = (key, value)
    return value


class Affine(nn.Module):
    """A batch norm in inference form: y = x * scale + shift per channel (the last dim)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def fold(self, weight: Tensor, bias: Tensor, out_dim: int = 0) -> tuple[Tensor, Tensor]:
        """(weight, bias) of a linear map followed by this affine, as one map: its output
        channels run along `out_dim` of `weight`. Costs a few operations on the weights
        instead of two passes over the activations (the same function, in training too)."""
        shape = [1] * weight.dim()
        shape[out_dim] = -1
        return weight * self.scale.reshape(shape), bias * self.scale + self.shift


def _gates(rnn: nn.GRU, suffix: str = "") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"weight_hh_l0{suffix}"),
            getattr(rnn, f"bias_ih_l0{suffix}"), getattr(rnn, f"bias_hh_l0{suffix}"))


def gru_scan(inputs: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """Run G GRUs at once over a sequence, gate-major: `inputs` [N, S, 3H] are the input
    projections (r of every GRU, then z, then n), `h` [N, H] their stacked hidden states,
    `w_hh` [3H, H] block-diagonal. Returns (outputs [N, S, H] in step order, last h)."""
    hidden = h.shape[-1]
    outs = []
    for s in range(inputs.shape[1]):
        gi = inputs[:, s]
        gh = torch.addmm(b_hh, h, w_hh.t())
        rz = torch.sigmoid(gi[:, :2 * hidden] + gh[:, :2 * hidden])
        r, z = rz[:, :hidden], rz[:, hidden:]
        n = torch.tanh(torch.addcmul(gi[:, 2 * hidden:], r, gh[:, 2 * hidden:]))
        h = torch.lerp(n, h, z)  # n + z * (h - n), one operation instead of three
        outs.append(h)
    return torch.stack(outs, dim=1), h


def fused_input(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(w_ih [3H, sum K] block-diagonal per gate, b_ih [3H]) of several GRUs, gate-major: one
    product of the GRUs' inputs side by side gives all r, then all z, then all n (no copies
    to reorder the outputs)."""
    w = torch.cat([torch.block_diag(*[wi.chunk(3, dim=0)[g] for wi, _ in parts])
                   for g in range(3)], dim=0)
    b = torch.cat([bi.chunk(3)[g] for g in range(3) for _, bi in parts])
    return w, b


def fused_hidden(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(w_hh [3H, H] block-diagonal per gate, b_hh [3H]) of several GRUs, gate-major."""
    w = torch.cat([torch.block_diag(*[wh.chunk(3, dim=0)[g] for wh, _ in parts])
                   for g in range(3)], dim=0)
    b = torch.cat([bh.chunk(3)[g] for g in range(3) for _, bh in parts])
    return w, b


class TRA(nn.Module):
    """Temporal recurrent attention: a GRU over each channel's frame energy gates the channel."""

    def __init__(self, channels: int = CHANNELS // 2) -> None:
        super().__init__()
        self.gru = nn.GRU(channels, channels * 2, batch_first=True)
        self.fc = nn.Linear(channels * 2, channels)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, F, C], h [B, 2C] -> (x gated, new h)."""
        energy = x.pow(2).mean(dim=2)  # [B, T, C]
        w_ih, w_hh, b_ih, b_hh = _gates(self.gru)
        out, h = gru_scan(F.linear(energy, w_ih, b_ih), h, w_hh, b_hh)
        gate = torch.sigmoid(self.fc(out))
        return x * gate.unsqueeze(2), h


class GTConvBlock(nn.Module):
    """Grouped temporal convolution: half the channels through SFE, point conv, a dilated
    causal depthwise conv over time, point conv and TRA; shuffled back with the other half."""

    def __init__(self, dilation: int, deconv: bool) -> None:
        super().__init__()
        half = CHANNELS // 2
        self.dilation = dilation
        self.context = 2 * dilation
        self.deconv = deconv
        self.point1 = nn.Conv2d(half * 3, CHANNELS, 1)
        self.bn1 = Affine(CHANNELS)
        self.act1 = nn.PReLU()
        # [16, 1, 3 (time), 3 (freq)]. The decoder's is a stride-1 transposed conv: the same
        # as a conv with the kernel reversed in both axes (kept as published).
        self.depth_weight = nn.Parameter(torch.zeros(CHANNELS, 1, 3, 3))
        self.depth_bias = nn.Parameter(torch.zeros(CHANNELS))
        self.bn_depth = Affine(CHANNELS)
        self.act_depth = nn.PReLU()
        self.point2 = nn.Conv2d(CHANNELS, half, 1)
        self.bn2 = Affine(half)
        self.tra = TRA(half)

    def _weights(self) -> tuple[Tensor, ...]:
        """(w1, b1, w_depth, b_depth, w2, b2): SFE then a point conv is one conv of kernel 3
        over frequency (GTCRN's SFE channel c * 3 + j is channel c of bin f + j - 1: kernel
        tap j); each batch norm is folded into the map before it (`Affine.fold`); the
        decoder's stride-1 transposed depthwise conv is a conv with the kernel reversed."""
        half = CHANNELS // 2
        w1, b1 = self.bn1.fold(self.point1.weight.reshape(CHANNELS, half, 1, 3),
                               _bias(self.point1))
        depth = self.depth_weight.flip(2, 3) if self.deconv else self.depth_weight
        wd, bd = self.bn_depth.fold(depth, self.depth_bias)
        w2, b2 = self.bn2.fold(self.point2.weight.flatten(1), _bias(self.point2))
        return w1, b1, wd, bd, w2, b2

    def forward(self, x: Tensor, cache: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, 33, 16], cache [B, 2d, 33, 16] (past inputs of the depthwise conv),
        h [B, 16] (TRA) -> (y, new cache, new h)."""
        half = CHANNELS // 2
        x1, x2 = x[..., :half], x[..., half:]
        w1, b1, wd, bd, w2, b2 = derived(self, self._weights)
        h1 = self.act1(freq_conv(x1, w1, b1, 1, 1))
        padded = torch.cat([cache, h1], dim=1)  # [B, 2d + T, F, C]
        frames = h1.shape[1]
        new_cache = padded[:, frames:]
        # depthwise over (time, frequency), channels-last like `freq_conv`
        # (the decoder's stride-1 transposed conv is a conv with the kernel reversed)
        h1 = F.conv2d(padded.permute(0, 3, 1, 2), wd, bd, padding=(0, 1),
                      dilation=(self.dilation, 1), groups=CHANNELS).permute(0, 2, 3, 1)
        h1 = self.act_depth(h1)
        h1 = F.linear(h1, w2, b2)
        h1, h = self.tra(h1, h)
        y = torch.stack([h1, x2], dim=-1).flatten(3)  # channels h0 x0 h1 x1 ... (the shuffle)
        return y, new_cache, h


class GroupedGRU(nn.Module):
    """Two GRUs, each on half of the features (and half of the hidden state)."""

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.rnn1 = nn.GRU(input_size // 2, hidden_size // 2, batch_first=True,
                           bidirectional=bidirectional)
        self.rnn2 = nn.GRU(input_size // 2, hidden_size // 2, batch_first=True,
                           bidirectional=bidirectional)

    def _weights(self) -> tuple[Tensor, ...]:
        """(w_ih, b_ih, w_hh, b_hh) of the layer's GRUs as one gate-major recurrence: the two
        halves, or with both directions (x1, x1 reversed, x2, x2 reversed) for the inputs."""
        if self.bidirectional:
            grus = [_gates(rnn, sfx) for rnn in (self.rnn1, self.rnn2)
                    for sfx in ("", "_reverse")]
        else:
            grus = [_gates(self.rnn1), _gates(self.rnn2)]
        return (*fused_input([(g[0], g[2]) for g in grus]),
                *fused_hidden([(g[1], g[3]) for g in grus]))

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [N, S, C] -> (y [N, S, hidden], last h [N, hidden]). Bidirectional (h must be
        None, zeros): y is [rnn1 forward, rnn1 backward, rnn2 forward, rnn2 backward]."""
        w_ih, b_ih, w_hh, b_hh = derived(self, self._weights)
        if not self.bidirectional:  # x is [x1, x2] already
            assert h is not None
            return gru_scan(F.linear(x, w_ih, b_ih), h, w_hh, b_hh)
        half = x.shape[-1] // 2
        xs = (x[..., :half], x[..., half:])
        # One projection for all four GRUs (gate-major columns) from [x, x reversed]: the
        # backward GRUs read the reversed sequence, and their outputs are put back in order.
        sources = torch.cat([xs[0], xs[0].flip(1), xs[1], xs[1].flip(1)], dim=-1)
        y, last = gru_scan(F.linear(sources, w_ih, b_ih),
                           x.new_zeros(x.shape[0], w_hh.shape[1]), w_hh, b_hh)
        q = w_hh.shape[1] // 4
        y = torch.cat([y[..., :q], y[..., q:2 * q].flip(1), y[..., 2 * q:3 * q],
                       y[..., 3 * q:].flip(1)], dim=-1)
        return y, last


class DPGRNN(nn.Module):
    """Grouped dual-path RNN: a bidirectional GRU across frequency inside each frame, then a
    causal GRU along time for each frequency position, each with a linear map, layer norm over
    (frequency, channel) and a residual connection."""

    def __init__(self) -> None:
        super().__init__()
        self.intra_rnn = GroupedGRU(CHANNELS, CHANNELS // 2, bidirectional=True)
        self.intra_fc = nn.Linear(CHANNELS, CHANNELS)
        self.intra_ln = nn.LayerNorm((WIDTH, CHANNELS), eps=1e-8)
        self.inter_rnn = GroupedGRU(CHANNELS, CHANNELS, bidirectional=False)
        self.inter_fc = nn.Linear(CHANNELS, CHANNELS)
        self.inter_ln = nn.LayerNorm((WIDTH, CHANNELS), eps=1e-8)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, 33, 16], h [B, 33, 16] (the time GRU's state) -> (y, new h)."""
        b, t, f, c = x.shape
        intra = self.intra_rnn(x.reshape(b * t, f, c))[0]
        x = x + self.intra_ln(self.intra_fc(intra).reshape(b, t, f, c))
        inter_in = x.transpose(1, 2).reshape(b * f, t, c)
        inter, h_new = self.inter_rnn(inter_in, h.reshape(b * f, c))
        inter = self.inter_fc(inter).reshape(b, f, t, c).transpose(1, 2)
        return x + self.inter_ln(inter), h_new.reshape(b, f, c)


class GTCRNCore(nn.Module):
    """The whole network: spectrum [B, T, 257, 2] (real, imag) -> complex mask [B, T, 257, 2]."""

    def __init__(self) -> None:
        super().__init__()
        filt = erb_filters()
        self.register_buffer("erb_fc", filt.clone())  # [64, 192]
        self.register_buffer("ierb_fc", filt.t().clone())  # [192, 64]
        self.en0 = nn.Conv2d(9, CHANNELS, (1, 5), stride=(1, 2), padding=(0, 2))
        self.en0_act = nn.PReLU()
        self.en1 = nn.Conv2d(CHANNELS, CHANNELS, (1, 5), stride=(1, 2), padding=(0, 2),
                             groups=2)
        self.en1_act = nn.PReLU()
        self.encoder = nn.ModuleList(GTConvBlock(d, deconv=False) for d in DILATIONS)
        self.dpgrnn = nn.ModuleList([DPGRNN(), DPGRNN()])
        self.decoder = nn.ModuleList(GTConvBlock(d, deconv=True) for d in reversed(DILATIONS))
        self.de3 = nn.ConvTranspose2d(CHANNELS, CHANNELS, (1, 5), stride=(1, 2), padding=(0, 2),
                                      groups=2)
        self.de3_bn = Affine(CHANNELS)
        self.de3_act = nn.PReLU()
        self.de4 = nn.ConvTranspose2d(CHANNELS, 2, (1, 5), stride=(1, 2), padding=(0, 2))
        self.de4_bn = Affine(2)

    @staticmethod
    def initial_state(batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Zeros: each temporal conv's context [B, 2d, 33, 16] (`enc<i>`, `dec<i>`), the TRA
        GRUs [B, 6, 16], the time GRUs [B, 2, 33, 16]."""
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch, *shape, device=device, dtype=dtype)

        state = {f"enc{i}": zeros(c, WIDTH, CHANNELS) for i, c in enumerate(CONTEXT)}
        state.update({f"dec{i}": zeros(c, WIDTH, CHANNELS)
                      for i, c in enumerate(reversed(CONTEXT))})
        state["tra"] = zeros(6, CHANNELS)
        state["inter"] = zeros(2, WIDTH, CHANNELS)
        return state

    def _bands(self, x: Tensor) -> Tensor:  # [B, T, 257, C] -> [B, T, 129, C]
        high = torch.einsum("btfc,ef->btec", x[:, :, N_LOW:], self.erb_fc)
        return torch.cat([x[:, :, :N_LOW], high], dim=2)

    def _unbands(self, x: Tensor) -> Tensor:  # [B, T, 129, C] -> [B, T, 257, C]
        high = torch.einsum("btec,fe->btfc", x[:, :, N_LOW:], self.ierb_fc)
        return torch.cat([x[:, :, :N_LOW], high], dim=2)

    def forward(self, spec: Tensor, state: dict[str, Tensor]) -> tuple[Tensor,
                                                                       dict[str, Tensor]]:
        """spec [B, T, 257, 2] -> (mask [B, T, 257, 2], state after the last frame)."""
        mag = torch.sqrt(spec.pow(2).sum(-1, keepdim=True) + 1e-12)
        feat = sfe(self._bands(torch.cat([mag, spec], dim=-1)))  # [B, T, 129, 9]
        x = self.en0_act(freq_conv(feat, sfe_weight(self.en0.weight, 3), _bias(self.en0), 2, 1))
        skips = [x]
        x = self.en1_act(freq_conv(x, self.en1.weight, _bias(self.en1), 2, 2))
        skips.append(x)
        tra = state["tra"]
        new: dict[str, Tensor] = {}
        new_tra = []
        for i, block in enumerate(self.encoder):
            x, new[f"enc{i}"], h = block(x, state[f"enc{i}"], tra[:, i])
            new_tra.append(h)
            skips.append(x)
        new_inter = []
        for i, dp in enumerate(self.dpgrnn):
            x, h = dp(x, state["inter"][:, i])
            new_inter.append(h)
        for i, block in enumerate(self.decoder):
            x, new[f"dec{i}"], h = block(x + skips[len(skips) - 1 - i], state[f"dec{i}"],
                                         tra[:, 3 + i])
            new_tra.append(h)
        # a transposed conv's weight is [Cin, Cout / groups, 1, k]: with 2 groups, output
        # channel g * 8 + j is weight[g * 8:(g + 1) * 8, j]
        w3 = self.de3.weight.reshape(2, CHANNELS // 2, CHANNELS // 2, 1, -1)
        w3 = (w3 * self.de3_bn.scale.reshape(2, 1, CHANNELS // 2, 1, 1)).reshape(
            self.de3.weight.shape)
        b3 = _bias(self.de3) * self.de3_bn.scale + self.de3_bn.shift
        x = self.de3_act(freq_deconv(x + skips[1], w3, b3, 2))
        w4, b4 = self.de4_bn.fold(self.de4.weight, _bias(self.de4), out_dim=1)
        m = freq_deconv(x + skips[0], w4, b4, 1)
        mask = self._unbands(torch.tanh(m))  # [B, T, 257, 2]
        new["tra"] = torch.stack(new_tra, dim=1)
        new["inter"] = torch.stack(new_inter, dim=1)
        return mask, new


def apply_mask(spec: Tensor, mask: Tensor) -> Tensor:
    """Complex multiplication of [..., 2] (real, imag) tensors."""
    sr, si = spec[..., 0], spec[..., 1]
    mr, mi = mask[..., 0], mask[..., 1]
    return torch.stack([sr * mr - si * mi, si * mr + sr * mi], dim=-1)


def _bias(conv: nn.Conv2d | nn.ConvTranspose2d) -> Tensor:
    """The conv's bias (GTCRN's encoder and decoder convs all have one)."""
    if conv.bias is None:
        raise ValueError("this convolution was built without a bias")
    return conv.bias
