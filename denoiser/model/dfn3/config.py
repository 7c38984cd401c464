"""DeepFilterNet3 hyper-parameters (the `config.ini` shipped with the DFN3 v0.5.6 export)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class DFN3Config:
    """Shapes of the signal path and the network; defaults are DFN3's.

    The two look-aheads are in frames (hops), as DeepFilterNet defines them:
    `conv_lookahead` shifts the features fed to the encoder (DFN's `pad_feat`), so the network
    output for frame t has seen features up to t + conv_lookahead; `df_lookahead` aligns the
    deep filter's `df_order` taps on frames t - df_order + 1 + df_lookahead .. t + df_lookahead
    (DFN's `MultiFrameModule` padding). The ERB mask multiplies frame t itself. Streaming, frame t
    can be output once frame t + max(conv_lookahead, df_lookahead) has arrived.
    (DFN3's own training code also asserts conv_lookahead == df_lookahead when conv_lookahead > 0;
    this port runs any pair, e.g. the (0, d) pairs DFN3 allows.)
    """

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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            wanted = float if f.type in (float, "float") else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    wanted is int and not isinstance(value, int)):
                raise ValueError(f"DFN3Config.{f.name} must be {wanted.__name__}, "
                                 f"got {value!r}")
        positive = ("sr", "fft_size", "hop_size", "nb_erb", "nb_df", "min_nb_erb_freqs",
                    "df_order", "conv_ch", "emb_hidden", "emb_layers", "df_hidden", "df_layers",
                    "enc_linear_groups", "linear_groups", "df_pathway_kernel_t", "norm_tau")
        bad = [name for name in positive if getattr(self, name) <= 0]
        if bad:
            raise ValueError(f"DFN3Config fields must be positive: {', '.join(bad)}")
        if self.fft_size != 2 * self.hop_size:
            raise ValueError("the STFT here overlaps by half: fft_size must be 2 * hop_size")
        if self.nb_df > self.freq_bins or self.nb_erb % 8 or self.emb_layers < 2:
            raise ValueError("need nb_df <= fft_size/2+1, nb_erb a multiple of 8, emb_layers >= 2")
        if not 0 <= self.df_lookahead < self.df_order:
            raise ValueError(f"df_lookahead must be in 0..{self.df_order - 1} (df_order - 1), "
                             f"got {self.df_lookahead}")
        if self.conv_lookahead < 0:
            raise ValueError(f"conv_lookahead must be 0 or more, got {self.conv_lookahead}")
        if self.lsnr_min >= self.lsnr_max:
            raise ValueError("lsnr_min must be below lsnr_max")

    @property
    def freq_bins(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def emb_dim(self) -> int:
        """Width of the embedding passed from the encoder to both decoders."""
        return self.conv_ch * self.nb_erb // 4

    @property
    def lookahead(self) -> int:
        """Frames the output waits for: libDF's `conv_lookahead.max(df_lookahead)` (DFN3)."""
        return max(self.conv_lookahead, self.df_lookahead)

    @property
    def latency_samples(self) -> int:
        """Window minus hop (overlap-add) plus the look-ahead: 1440 for the shipped (2, 2)."""
        return self.fft_size - self.hop_size + self.lookahead * self.hop_size


# Named network sizes (field overrides of DFN3Config). "dfn3" is the published model; the
# smaller ones keep its signal path (STFT, ERB features, deep filter, look-ahead) and shrink the
# network, because on CPU a stream's cost per hop is what sets how many calls a core carries.
SIZES: dict[str, dict[str, int]] = {
    "dfn3": {},
    "dfn3-m": {"conv_ch": 32, "emb_hidden": 192, "df_hidden": 192, "emb_layers": 2,
               "df_layers": 2},
    "dfn3-s": {"conv_ch": 16, "emb_hidden": 128, "df_hidden": 128, "emb_layers": 2,
               "df_layers": 1},
}


def sized_config(size: str, **overrides: int) -> DFN3Config:
    """DFN3Config of a named size (`SIZES`), with further field overrides (look-aheads)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    return DFN3Config(**{**SIZES[size], **overrides})
