"""DFN3's encoder, ERB decoder and DF decoder, as the ONNX export computes them.

Tensors are [B, C, T, F] for conv paths and [B, T, D] for the embedding. Convolutions with a
time kernel take their past frames as explicit input (`context + T` frames in, T out), so the
same code serves an offline sequence (zero context) and one streaming step (saved context).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from denoiser.dfn3.config import DFN3Config
from denoiser.dfn3.layers import GroupedLinear, SeparableConv, SqueezedGRU


def _to_emb(x: Tensor) -> Tensor:
    """[B, C, T, F] -> [B, T, F*C] (frequency-major, channels fastest), as DFN3 flattens."""
    b, c, t, f = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, t, f * c)


class Encoder(nn.Module):
    """Features -> skip tensors e0..e3, the embedding, the DF pathway c0 and the local SNR."""

    erb_context = 2  # frames of past features the 3x3 input convs need
    spec_context = 2

    def __init__(self, cfg: DFN3Config) -> None:
        super().__init__()
        ch = cfg.conv_ch
        self.cfg = cfg
        self.erb_conv0 = nn.Conv2d(1, ch, (3, 3), padding=(0, 1))
        self.erb_conv1 = SeparableConv(ch, ch, (1, 3), groups=ch, fstride=2)
        self.erb_conv2 = SeparableConv(ch, ch, (1, 3), groups=ch, fstride=2)
        self.erb_conv3 = SeparableConv(ch, ch, (1, 3), groups=ch, fstride=1)
        self.df_conv0 = SeparableConv(2, ch, (3, 3), groups=2)
        self.df_conv1 = SeparableConv(ch, ch, (1, 3), groups=ch, fstride=2)
        self.df_fc_emb = GroupedLinear(ch * cfg.nb_df // 2, cfg.emb_dim, cfg.enc_linear_groups)
        self.emb_gru = SqueezedGRU(cfg.emb_dim, cfg.emb_hidden, 1, cfg.linear_groups,
                                   out_features=cfg.emb_dim)
        self.lsnr_fc = nn.Linear(cfg.emb_dim, 1)

    def forward(self, feat_erb: Tensor, feat_spec: Tensor, h: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """feat_erb [B, 1, 2+T, E], feat_spec [B, 2, 2+T, F_df], h [B, 1, H] ->
        (e0, e1, e2, e3, emb [B, T, D], c0 [B, C, T, F_df], lsnr [B, T, 1], h)."""
        e0 = torch.relu(self.erb_conv0(feat_erb))
        e1 = self.erb_conv1(e0)
        e2 = self.erb_conv2(e1)
        e3 = self.erb_conv3(e2)
        c0 = self.df_conv0(feat_spec)
        c1 = self.df_conv1(c0)
        cemb = torch.relu(self.df_fc_emb(_to_emb(c1)))
        emb, h = self.emb_gru(_to_emb(e3) + cemb, h)
        span = self.cfg.lsnr_max - self.cfg.lsnr_min
        lsnr = torch.sigmoid(self.lsnr_fc(emb)) * span + self.cfg.lsnr_min
        return e0, e1, e2, e3, emb, c0, lsnr, h


class ErbDecoder(nn.Module):
    """Embedding + encoder skips -> ERB gains in [0, 1] of shape [B, 1, T, E]."""

    def __init__(self, cfg: DFN3Config) -> None:
        super().__init__()
        ch = cfg.conv_ch
        self.emb_gru = SqueezedGRU(cfg.emb_dim, cfg.emb_hidden, cfg.emb_layers - 1,
                                   cfg.linear_groups, out_features=cfg.emb_dim)
        self.conv3p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt3 = SeparableConv(ch, ch, (1, 3), groups=ch)
        self.conv2p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt2 = SeparableConv(ch, ch, (1, 3), groups=ch, fstride=2, transposed=True)
        self.conv1p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.convt1 = SeparableConv(ch, ch, (1, 3), groups=ch, fstride=2, transposed=True)
        self.conv0p = nn.Conv2d(ch, ch, 1, groups=ch)
        self.conv0_out = nn.Conv2d(ch, 1, (1, 3), padding=(0, 1))

    def forward(self, emb: Tensor, e3: Tensor, e2: Tensor, e1: Tensor, e0: Tensor,
                h: Tensor) -> tuple[Tensor, Tensor]:
        b, _, t, f8 = e3.shape
        y, h = self.emb_gru(emb, h)
        y = y.reshape(b, t, f8, -1).permute(0, 3, 1, 2)
        y = self.convt3(torch.relu(self.conv3p(e3)) + y)
        y = self.convt2(torch.relu(self.conv2p(e2)) + y)
        y = self.convt1(torch.relu(self.conv1p(e1)) + y)
        m = torch.sigmoid(self.conv0_out(torch.relu(self.conv0p(e0)) + y))
        return m, h


class DfDecoder(nn.Module):
    """Embedding + DF pathway -> complex deep-filter coefficients [B, T, F_df, order, 2]."""

    def __init__(self, cfg: DFN3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = cfg.df_pathway_kernel_t - 1
        out_ch = 2 * cfg.df_order
        self.df_gru = SqueezedGRU(cfg.emb_dim, cfg.df_hidden, cfg.df_layers, 8)
        self.df_skip = GroupedLinear(cfg.emb_dim, cfg.df_hidden, cfg.linear_groups)
        self.df_convp = SeparableConv(cfg.conv_ch, out_ch, (cfg.df_pathway_kernel_t, 1),
                                      groups=2)
        self.df_out = GroupedLinear(cfg.df_hidden, cfg.nb_df * out_ch, cfg.linear_groups)

    def forward(self, emb: Tensor, c0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """emb [B, T, D], c0 [B, C, 4+T, F_df] (with its past frames), h [B, layers, H]."""
        b, t, _ = emb.shape
        y, h = self.df_gru(emb, h)
        y = y + self.df_skip(emb)
        coefs = torch.tanh(self.df_out(y)).reshape(b, t, self.cfg.nb_df, -1)
        coefs = coefs + self.df_convp(c0).permute(0, 2, 3, 1)
        return coefs.reshape(b, t, self.cfg.nb_df, self.cfg.df_order, 2), h
