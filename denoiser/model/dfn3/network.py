"""DFN3's encoder, ERB decoder and DF decoder, as the ONNX export computes them.

Layout is channels-last: conv paths [B, T, F, C], the embedding [B, T, D]. Convolutions with
a time kernel take their past frames as explicit input (`context + T` frames in, T out), so
the same code serves an offline sequence (zero context) and one streaming step (saved context).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from denoiser.model.dfn3.config import DFN3Config
from denoiser.model.dfn3.layers import (
    DepthwisePointwise,
    GroupedLinear,
    SeparableConv,
    SqueezedGRU,
    bias_of,
    channel_scale,
    conv_patch_matrix,
    conv_patches,
    derived,
)


def _flat(x: Tensor) -> Tensor:
    """[B, T, F, C] -> [B, T, F*C] (frequency-major, channels fastest), as DFN3 flattens."""
    return x.reshape(x.shape[0], x.shape[1], -1)


class Encoder(nn.Module):
    """Features -> skip tensors e0..e3, the embedding, the DF pathway c0 and the local SNR."""

    erb_context = 2  # frames of past features the 3x3 input convs need
    spec_context = 2

    def __init__(self, cfg: DFN3Config) -> None:
        super().__init__()
        ch = cfg.conv_ch
        self.cfg = cfg
        self.erb_conv0 = nn.Conv2d(1, ch, (3, 3), padding=(0, 1))
        self.erb_conv1 = SeparableConv(ch, fstride=2)
        self.erb_conv2 = SeparableConv(ch, fstride=2)
        self.erb_conv3 = SeparableConv(ch, fstride=1)
        self.df_conv0 = DepthwisePointwise(
            nn.Conv2d(2, ch, (3, 3), padding=(0, 1), groups=2, bias=False), nn.Conv2d(ch, ch, 1))
        self.df_conv1 = SeparableConv(ch, fstride=2)
        self.df_fc_emb = GroupedLinear(ch * cfg.nb_df // 2, cfg.emb_dim, cfg.enc_linear_groups)
        self.emb_gru = SqueezedGRU(cfg.emb_dim, cfg.emb_hidden, 1, cfg.linear_groups,
                                   out_features=cfg.emb_dim)
        self.lsnr_fc = nn.Linear(cfg.emb_dim, 1)

    def forward(self, feat_erb: Tensor, feat_spec: Tensor, h: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """feat_erb [B, 2+T, E], feat_spec [B, 2+T, F_df, 2] (re, im), h [B, 1, H] ->
        (e0, e1, e2, e3 [B, T, F_i, C], emb [B, T, D], c0 [B, T, F_df, C], lsnr [B, T], h)."""
        erb_patches = conv_patches(feat_erb.unsqueeze(-1), 3, 3)  # [B, T, E, 3*3 + 1]
        conv = self.erb_conv0
        e0 = erb_patches @ derived(self, "erb_conv0", (conv.weight, bias_of(conv)),
                                   lambda: conv_patch_matrix(conv.weight, bias_of(conv)))
        e0 = e0.relu_()
        e1 = self.erb_conv1(e0)
        e2 = self.erb_conv2(e1)
        e3 = self.erb_conv3(e2)
        dw, pw = self.df_conv0.dw, self.df_conv0.pw
        df_conv0 = derived(self, "df_conv0", (dw.weight, pw.weight, bias_of(pw)),
                           self.df_conv0_matrix)
        c0 = (conv_patches(feat_spec, 3, 3) @ df_conv0).relu_()
        c1 = self.df_conv1(c0)
        cemb = torch.relu(self.df_fc_emb(_flat(c1)))
        emb, h = self.emb_gru(_flat(e3) + cemb, h)
        span = self.cfg.lsnr_max - self.cfg.lsnr_min
        lsnr = torch.sigmoid(self.lsnr_fc(emb))[..., 0] * span + self.cfg.lsnr_min
        return e0, e1, e2, e3, emb, c0, lsnr, h

    def df_conv0_matrix(self) -> Tensor:
        """df_conv0's grouped 3x3 conv (re -> 32 channels, im -> 32) and its 1x1 conv folded
        into one `conv_patch_matrix` [3*3*2 + 1, C]: both are linear, the ReLU comes after."""
        dw = self.df_conv0.dw.weight  # [C, 1, 3, 3], groups 2 (input channel = group)
        pw = self.df_conv0.pw.weight[:, :, 0, 0]  # [C_out, C_in]
        groups, per_group = self.df_conv0.dw.groups, dw.shape[0] // self.df_conv0.dw.groups
        dw = dw.reshape(groups, per_group, -1)  # [G, C/G, 9]
        pw_in = pw.T.reshape(groups, per_group, pw.shape[0])  # [G, C/G, C_out]
        fused = torch.bmm(dw.transpose(1, 2), pw_in)  # [G, 3*3, C_out]
        return conv_patch_matrix(fused.reshape(groups, 3, 3, -1).permute(3, 0, 1, 2),
                                 bias_of(self.df_conv0.pw))


class ErbDecoder(nn.Module):
    """Embedding + encoder skips -> ERB gains in [0, 1] of shape [B, T, E]."""

    def __init__(self, cfg: DFN3Config) -> None:
        super().__init__()
        ch = cfg.conv_ch
        self.emb_gru = SqueezedGRU(cfg.emb_dim, cfg.emb_hidden, cfg.emb_layers - 1,
                                   cfg.linear_groups, out_features=cfg.emb_dim)
        self.conv3p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt3 = SeparableConv(ch)
        self.conv2p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt2 = SeparableConv(ch, transposed=True)
        self.conv1p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt1 = SeparableConv(ch, transposed=True)
        self.conv0p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.conv0_out = nn.Conv2d(ch, 1, (1, 3), padding=(0, 1))

    def forward(self, emb: Tensor, e3: Tensor, e2: Tensor, e1: Tensor, e0: Tensor,
                h: Tensor) -> tuple[Tensor, Tensor]:
        b, t, f8, c = e3.shape
        y, h = self.emb_gru(emb, h)
        y = y.reshape(b, t, f8, c)
        y = self.convt3(channel_scale(e3, self.conv3p).relu_() + y)
        y = self.convt2(channel_scale(e2, self.conv2p).relu_() + y)
        y = self.convt1(channel_scale(e1, self.conv1p).relu_() + y)
        y = channel_scale(e0, self.conv0p).relu_() + y
        # 64 -> 1 channel conv with kernel 3 over frequency: project onto the 3 taps (as
        # [3, N] = W^T y^T, which BLAS runs far better than N x 3), then shift and add.
        taps = (self.conv0_out.weight[0, :, 0, :].T @ y.reshape(-1, c).T).view(3, b, t, -1)
        logits = taps[1] + self.conv0_out.bias
        logits[:, :, 1:] += taps[0, :, :, :-1]
        logits[:, :, :-1] += taps[2, :, :, 1:]
        return torch.sigmoid_(logits), h


class DfDecoder(nn.Module):
    """Embedding + DF pathway -> complex deep-filter coefficients [B, T, F_df, order, 2]."""

    def __init__(self, cfg: DFN3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = cfg.df_pathway_kernel_t - 1
        out_ch = 2 * cfg.df_order
        self.df_gru = SqueezedGRU(cfg.emb_dim, cfg.df_hidden, cfg.df_layers, 8)
        self.df_skip = GroupedLinear(cfg.emb_dim, cfg.df_hidden, cfg.linear_groups)
        self.df_convp = DepthwisePointwise(
            nn.Conv2d(cfg.conv_ch, out_ch, (cfg.df_pathway_kernel_t, 1), groups=2, bias=False),
            nn.Conv2d(out_ch, out_ch, 1))
        self.df_out = GroupedLinear(cfg.df_hidden, cfg.nb_df * out_ch, cfg.linear_groups)

    def forward(self, emb: Tensor, c0: Tensor, acc: Tensor, h: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """emb [B, T, D], c0 [B, T, F_df, C], acc [B, F_df, kt-1, 2*order] (the pathway's partial
        sums, see `pathway`), h [B, layers, H] -> (coefs [B, T, F_df, order, 2], acc, h)."""
        b, t, _ = emb.shape
        y, h = self.df_gru(emb, h)
        y = y + self.df_skip(emb)
        coefs = torch.tanh(self.df_out(y)).reshape(b, t, self.cfg.nb_df, -1)
        path, acc = self.pathway(c0, acc)
        coefs = coefs + torch.relu(path + bias_of(self.df_convp.pw))
        return coefs.reshape(b, t, self.cfg.nb_df, self.cfg.df_order, 2), acc, h

    def initial_acc(self, batch: int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
        out_ch = self.df_convp.pw.weight.shape[0]
        return torch.zeros(batch, self.cfg.nb_df, self.context, out_ch, device=device,
                           dtype=dtype)

    def pathway_matrix(self) -> Tensor:
        """df_convp (grouped conv over kt frames, then 1x1) as one [C, kt*O] matrix: block j
        maps a c0 frame to its (pre-bias) contribution to the output j frames later."""
        dw = self.df_convp.dw.weight[..., 0]  # [O, C/G, kt]
        pw = self.df_convp.pw.weight[:, :, 0, 0]  # [O, O]
        groups = self.df_convp.dw.groups
        out_ch, per_in, kt = dw.shape
        dw = dw.reshape(groups, out_ch // groups, per_in, kt)
        fused = torch.einsum("goik,pgo->gikp", dw, pw.reshape(out_ch, groups, out_ch // groups))
        return fused.flip(2).reshape(groups * per_in, kt * out_ch)

    def pathway(self, c0: Tensor, acc: Tensor) -> tuple[Tensor, Tensor]:
        """df_convp over time without keeping past c0 frames: each new frame is projected once
        onto all kt taps, and the kt-1 outputs still waiting for later frames are kept as
        running sums `acc` [B, F, kt-1, O] (acc[:, :, j] belongs to the j-th next output).
        Returns the pre-bias, pre-ReLU output [B, T, F, O] and the new sums. (With the shipped
        weights the ReLU after it was closed on every frame of the test clip, max -0.011; it is
        computed all the same, as nothing guarantees that for every input.)"""
        b, t, f, _ = c0.shape
        kt, out_ch = self.context + 1, acc.shape[-1]
        convp = self.df_convp
        matrix = derived(self, "df_convp", (convp.dw.weight, convp.pw.weight),
                         self.pathway_matrix)
        proj = (c0 @ matrix).view(b, t, f, kt, out_ch)
        if t == 1:  # streaming: one fresh tensor, summed in place
            y = proj[:, 0]
            y[:, :, :-1] += acc
            return y[:, :, :1].transpose(1, 2), y[:, :, 1:]
        if not torch.is_grad_enabled() and t < kt:  # a few frames: the streaming form, per frame
            outs = []
            for k in range(t):
                y = proj[:, k]
                y[:, :, :-1] += acc
                outs.append(y[:, :, 0])
                acc = y[:, :, 1:]
            return torch.stack(outs, 1), acc
        y = F.pad(acc, (0, 0, 0, t))  # [B, F, t + kt - 1, O], output frames then pending ones
        for j in range(kt):
            y = y + F.pad(proj[:, :, :, j].transpose(1, 2), (0, 0, j, kt - 1 - j))
        return y[:, :, :t].transpose(1, 2), y[:, :, t:]
