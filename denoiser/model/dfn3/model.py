"""`DFN3`: DeepFilterNet3 as a batched `StreamingModel` whose whole memory is an explicit state.

One step takes one 480-sample hop per stream and:
1. analyses it into a 481-bin spectrum (libDF's Vorbis-window STFT),
2. computes the ERB-dB and unit-normalised complex features (exponential-mean norms),
3. runs the encoder, ERB decoder and DF decoder on one frame, with the conv time context, the
   DF pathway's running sums (its 5-frame conv kept as partial outputs, 3.8 k values per
   stream instead of 4 past 96x64 c0 frames) and GRU hidden states taken from the state,
4. enhances frame t = newest - L, L = max(conv_lookahead, df_lookahead): the network's output
   for frame t came with input frame t + conv_lookahead (held L - conv_lookahead steps when
   df_lookahead is the larger), its ERB gains multiply frame t and its deep filter runs over
   frames t - df_order + 1 + df_lookahead .. t + df_lookahead in the lowest `nb_df` bins,
5. optionally limits the attenuation, then overlap-adds the inverse FFT.
Latency: fft - hop + L * hop, 1440 samples (30 ms) for the shipped L = 2, like libDF's runtime.
"""

from __future__ import annotations

import torch
from torch import Tensor

from denoiser.model.dfn3.config import DFN3Config
from denoiser.model.dfn3.deep_filter import apply_erb_gains, deep_filter
from denoiser.model.dfn3.features import (
    erb_band_widths,
    erb_features,
    erb_matrices,
    norm_alpha,
    stft_analysis,
    stft_synthesis,
    unit_norm_features,
    vorbis_window,
)
from denoiser.model.dfn3.network import DfDecoder, Encoder, ErbDecoder
from denoiser.model.streaming import State, StreamingModel

# libDF's initial normalisation states (MEAN_NORM_INIT, UNIT_NORM_INIT), spread over the bands.
ERB_NORM_INIT = (-60.0, -90.0)
UNIT_NORM_INIT = (0.001, 0.0001)

_Hidden = tuple[Tensor, Tensor, Tensor, Tensor]  # the network's h_enc, h_erb, h_df, df_acc


class DFN3(StreamingModel):
    """DeepFilterNet3, stepping a batch of independent streams one hop at a time."""

    traceable = True  # branches only on shapes (frames per call) and settings
    provenance: dict[str, object]  # set by the loader: where the weights came from
    # Buffers (registered in __init__), declared for the type checker.
    window: Tensor
    erb_mean: Tensor
    erb_expand: Tensor

    def __init__(self, cfg: DFN3Config | None = None, atten_lim_db: float | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DFN3Config()
        self.sample_rate = cfg.sr
        self.hop_size = cfg.hop_size
        self.latency_samples = cfg.latency_samples
        self.atten_lim_db = atten_lim_db
        self.alpha = norm_alpha(cfg.sr, cfg.hop_size, cfg.norm_tau)
        widths = erb_band_widths(cfg.sr, cfg.fft_size, cfg.nb_erb, cfg.min_nb_erb_freqs)
        erb_mean, erb_expand = erb_matrices(widths)
        self.register_buffer("window", vorbis_window(cfg.fft_size), persistent=False)
        self.register_buffer("erb_mean", erb_mean, persistent=False)
        self.register_buffer("erb_expand", erb_expand, persistent=False)
        self.enc = Encoder(cfg)
        self.erb_dec = ErbDecoder(cfg)
        self.df_dec = DfDecoder(cfg)
        # Output frame t = newest - L. Past spectra kept: the deep filter's oldest tap is frame
        # t - (order - 1) + df_lookahead (the mask's frame t is never older than that).
        self.lookahead = cfg.lookahead
        self.spec_history = cfg.lookahead + cfg.df_order - 1 - cfg.df_lookahead
        # Network outputs (gains, coefficients) wait this many steps before they are applied.
        self.output_delay = cfg.lookahead - cfg.conv_lookahead

    def network_state_dict(self) -> dict[str, Tensor]:
        """The trained parameters (all the persistent state of this module)."""
        return self.state_dict()

    def initial_state(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> State:
        cfg = self.cfg

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch, *shape, device=device, dtype=dtype)

        erb_init = torch.linspace(*ERB_NORM_INIT, cfg.nb_erb, device=device, dtype=dtype)
        unit_init = torch.linspace(*UNIT_NORM_INIT, cfg.nb_df, device=device, dtype=dtype)
        state = {
            "analysis_mem": zeros(cfg.hop_size),
            "synthesis_mem": zeros(cfg.hop_size),
            "erb_norm": erb_init.expand(batch, -1).clone(),
            "unit_norm": unit_init.expand(batch, -1).clone(),
            "erb_ctx": zeros(Encoder.erb_context, cfg.nb_erb),
            "spec_ctx": zeros(Encoder.spec_context, cfg.nb_df, 2),
            "df_acc": self.df_dec.initial_acc(batch, device, dtype),
            "h_enc": zeros(1, cfg.emb_hidden),
            "h_erb": zeros(cfg.emb_layers - 1, cfg.emb_hidden),
            "h_df": zeros(cfg.df_layers, cfg.df_hidden),
            "spec_hist": zeros(self.spec_history, cfg.freq_bins, 2),
        }
        if self.output_delay:
            state["gains_hist"] = zeros(self.output_delay, cfg.nb_erb)
            state["coefs_hist"] = zeros(self.output_delay, cfg.nb_df, cfg.df_order, 2)
        return state

    def _check(self, audio: Tensor) -> None:
        if audio.dim() != 2 or audio.shape[1] == 0 or audio.shape[1] % self.hop_size:
            raise ValueError(f"expected audio [B, n*{self.hop_size}], got {tuple(audio.shape)}")

    def step(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        if hops.dim() != 2 or hops.shape[1] != self.hop_size:
            raise ValueError(f"expected hops [B, {self.hop_size}], got {tuple(hops.shape)}")
        out, new_state, _ = self.process(hops, state)
        return out, new_state

    def forward(self, audio: Tensor) -> Tensor:
        """Offline: the whole signal at once (sequence GRUs, batched convs); equals stepping."""
        self._check(audio)
        state = self.initial_state(audio.shape[0], audio.device, audio.dtype)
        return self.process(audio, state)[0]

    def step_many(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        """T hops per stream in one call (`process`): the output is that of T steps."""
        out, new_state, _ = self.process(hops, state)
        return out, new_state

    def process(self, audio: Tensor, state: State) -> tuple[Tensor, State, Tensor]:
        """Any whole number of hops [B, T*hop] from `state` -> (out, new state, lsnr [B, T]).

        The network runs over the T frames at once (batched convs; in inference the GRUs and
        the DF pathway step through a few frames in their streaming form, which is cheaper on
        CPU than their sequence form).
        """
        self._check(audio)
        cfg = self.cfg
        io_dtype = audio.dtype
        net_dtype = self.enc.lsnr_fc.weight.dtype
        f32 = {k: v.float() for k, v in state.items()}

        spec, analysis_mem = stft_analysis(audio.float(), f32["analysis_mem"], self.window)
        feat_erb, erb_norm = erb_features(spec, self.erb_mean, f32["erb_norm"], self.alpha)
        feat_cplx, unit_norm = unit_norm_features(spec[..., :cfg.nb_df], f32["unit_norm"],
                                                  self.alpha)

        # Network inputs with their past frames prepended: [B, ctx + T, F(, C)].
        erb_in = torch.cat([f32["erb_ctx"], feat_erb], dim=1)
        spec_in = torch.cat([f32["spec_ctx"], torch.view_as_real(feat_cplx)], dim=1)
        hidden: _Hidden = (state["h_enc"].to(net_dtype), state["h_erb"].to(net_dtype),
                           state["h_df"].to(net_dtype), state["df_acc"].to(net_dtype))
        gains, coefs, lsnr, (h_enc, h_erb, h_df, df_acc) = self._network(
            erb_in.to(net_dtype), spec_in.to(net_dtype), hidden)

        if self.output_delay:  # the network ran ahead of the frames it enhances: hold it back
            gains = torch.cat([state["gains_hist"].to(gains.dtype), gains], dim=1)
            coefs = torch.cat([state["coefs_hist"].to(coefs.dtype), coefs], dim=1)
            gains_hist, coefs_hist = gains[:, -self.output_delay:], coefs[:, -self.output_delay:]
            gains, coefs = gains[:, :-self.output_delay], coefs[:, :-self.output_delay]

        # Past spectra, then the new ones; new frame k (index H + k) enhances frame H + k - L,
        # whose deep filter spans indices k .. k + order - 1 (H = L + order - 1 - df_lookahead).
        frames = torch.cat([torch.view_as_complex(f32["spec_hist"].contiguous()), spec], dim=1)
        t = spec.shape[1]
        first = self.spec_history - self.lookahead
        target = frames[:, first:first + t]
        enhanced = apply_erb_gains(target, gains, self.erb_expand)
        low = deep_filter(frames[:, :t + cfg.df_order - 1, :cfg.nb_df], coefs)
        enhanced = torch.cat([low, enhanced[..., cfg.nb_df:]], dim=-1)
        if self.atten_lim_db is not None:
            lim = 10.0 ** (-abs(self.atten_lim_db) / 20.0)
            enhanced = enhanced * (1.0 - lim) + target * lim
        out, synthesis_mem = stft_synthesis(enhanced, f32["synthesis_mem"], self.window)

        new_state = {
            "analysis_mem": analysis_mem,
            "synthesis_mem": synthesis_mem,
            "erb_norm": erb_norm,
            "unit_norm": unit_norm,
            "erb_ctx": erb_in[:, -Encoder.erb_context:],
            "spec_ctx": spec_in[:, -Encoder.spec_context:],
            "df_acc": df_acc,
            "h_enc": h_enc,
            "h_erb": h_erb,
            "h_df": h_df,
            "spec_hist": torch.view_as_real(frames[:, frames.shape[1] - self.spec_history:]),
        }
        if self.output_delay:
            new_state["gains_hist"], new_state["coefs_hist"] = gains_hist, coefs_hist
        # Views into this step's fresh tensors (the engine copies them into its table anyway).
        new_state = {k: v.to(state[k].dtype) for k, v in new_state.items()}
        return out.to(io_dtype), new_state, lsnr.float()

    def _network(self, erb_in: Tensor, spec_in: Tensor,
                 hidden: _Hidden) -> tuple[Tensor, Tensor, Tensor, _Hidden]:
        """Encoder and both decoders over all frames: (gains, coefs, lsnr, new hidden)."""
        h_enc, h_erb, h_df, df_acc = hidden
        e0, e1, e2, e3, emb, c0, lsnr, h_enc = self.enc(erb_in, spec_in, h_enc)
        gains, h_erb = self.erb_dec(emb, e3, e2, e1, e0, h_erb)
        coefs, df_acc, h_df = self.df_dec(emb, c0, df_acc, h_df)
        return gains, coefs, lsnr, (h_enc, h_erb, h_df, df_acc)
