"""DeepFilterNet3 hyper-parameters (the `config.ini` shipped with the DFN3 v0.5.6 export)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DFN3Config:
    """Shapes of the signal path and the network; defaults are DFN3's."""

    sr: int = 48_000
    fft_size: int = 960
    hop_size: int = 480
    nb_erb: int = 32
    nb_df: int = 96
    min_nb_erb_freqs: int = 2
    norm_tau: float = 1.0
    df_order: int = 5
    df_lookahead: int = 2
    conv_lookahead: int = 2
    conv_ch: int = 64
    emb_hidden: int = 256
    emb_layers: int = 3
    df_hidden: int = 256
    df_layers: int = 2
    enc_linear_groups: int = 32
    linear_groups: int = 16
    df_pathway_kernel_t: int = 5
    lsnr_min: float = -15.0
    lsnr_max: float = 35.0

    @property
    def freq_bins(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def emb_dim(self) -> int:
        """Width of the embedding passed from the encoder to both decoders."""
        return self.conv_ch * self.nb_erb // 4

    @property
    def latency_samples(self) -> int:
        """Window minus hop (overlap-add) plus the look-ahead of the convolutions."""
        return self.fft_size - self.hop_size + self.conv_lookahead * self.hop_size
