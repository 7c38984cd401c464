"""DFN3's look-aheads: each behaves as DeepFilterNet defines it, the output is delayed by exactly
the declared `latency_samples`, and `load_dfn3` rebuilds (and re-targets) configs."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from denoiser.model.dfn3 import DFN3, DFN3Config
from denoiser.model.dfn3.features import (
    erb_features,
    stft_analysis,
    stft_synthesis,
    unit_norm_features,
)
from denoiser.model.dfn3.retarget import retarget_df_lookahead
from denoiser.model.weights import load_dfn3
from denoiser.training.export import export_weights
from support.sample_audio import noisy_example

torch.set_num_threads(1)
HOP = 480
PAIRS = list(itertools.product(range(3), range(3)))  # (conv_lookahead, df_lookahead)


def config(conv: int, df: int) -> DFN3Config:
    return DFN3Config(conv_lookahead=conv, df_lookahead=df)


def random_model(cfg: DFN3Config, seed: int = 0) -> DFN3:
    """Every parameter uniform in [-0.2, 0.2] (DFN3's grouped linears start at zero)."""
    model = DFN3(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 0.4 - 0.2)
    return model.eval()


def identity_model(cfg: DFN3Config) -> DFN3:
    """Random weights except the outputs: ERB gains 1 (sigmoid(30) rounds to 1.0 in float32)
    and deep-filter coefficients 1 on the tap of frame t itself (tap df_order-1-df_lookahead)."""
    model = random_model(cfg)
    with torch.no_grad():
        model.erb_dec.conv0_out.weight.zero_()
        model.erb_dec.conv0_out.bias.fill_(30.0)
        model.df_dec.df_out.weight.zero_()  # tanh(0) = 0
        model.df_dec.df_convp.dw.weight.zero_()  # pathway 0: coefs = relu(bias)
        bias = torch.zeros(cfg.df_order, 2)
        bias[cfg.df_order - 1 - cfg.df_lookahead, 0] = 1.0
        model.df_dec.df_convp.pw.bias.copy_(bias.flatten())
    return model


def stepped(model: DFN3, audio: torch.Tensor) -> torch.Tensor:
    state = model.initial_state(audio.shape[0])
    outs = []
    for hop in audio.split(HOP, dim=1):
        out, state = model.step(hop, state)
        outs.append(out)
    return torch.cat(outs, dim=1)


def click_peaks(model: DFN3) -> list[int]:
    """Where an impulse on quiet noise comes out, relative to where it went in."""
    rng = np.random.default_rng(0)
    lags = []
    for offset in (24_000, 24_137, 24_479):
        x = (rng.standard_normal(72_000) * 1e-3).astype(np.float32)
        x[offset] = 0.9
        with torch.no_grad():
            y = model(torch.from_numpy(x)[None])[0].numpy()
        lags.append(int(np.argmax(np.abs(y))) - offset)
    return lags


def best_lag(x: np.ndarray, y: np.ndarray, max_hops: int = 5) -> int:
    """The lag (whole hops) at which y best matches x by SI-SDR."""
    def sisdr(ref: np.ndarray, est: np.ndarray) -> float:
        scale = np.dot(est, ref) / np.dot(ref, ref)
        return float(10 * np.log10(np.sum((scale * ref) ** 2) / np.sum((est - scale * ref) ** 2)))
    scores = {lag: sisdr(x[:len(x) - lag], y[lag:]) for lag in range(0, max_hops * HOP, HOP)}
    return max(scores, key=scores.get)


@pytest.mark.parametrize(("conv", "df"), PAIRS)
def test_latency_is_window_minus_hop_plus_max_lookahead(conv: int, df: int) -> None:
    assert DFN3(config(conv, df)).latency_samples == 960 - 480 + 480 * max(conv, df)
    assert DFN3Config().latency_samples == 1440  # the shipped (2, 2)


@torch.no_grad()
@pytest.mark.parametrize(("conv", "df"), PAIRS)
def test_identity_output_is_the_input_delayed_by_latency(conv: int, df: int) -> None:
    """Gains 1 and the deep filter's own-frame tap 1: the output is the input, exactly
    `latency_samples` later (the STFT reconstructs perfectly), offline and stepped."""
    model = identity_model(config(conv, df))
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(40 * HOP).astype(np.float32))
    y = model(x[None] * 0.1)[0]
    lat = model.latency_samples
    assert torch.allclose(y[lat:], x[:-lat] * 0.1, atol=1e-6, rtol=0)
    assert y[:lat].abs().max() < 1e-6
    assert torch.equal(stepped(model, x[None] * 0.1)[0], y)


@torch.no_grad()
def test_identity_needs_the_right_tap() -> None:
    """The test above can fail: the same identity weights with another df_lookahead put the
    low band one hop off (so the tap alignment is really what is measured)."""
    weights = identity_model(config(0, 0)).state_dict()
    model = DFN3(config(0, 1))
    model.load_state_dict(weights)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(40 * HOP).astype(np.float32))
    y = model.eval()(x[None])[0]
    lat = model.latency_samples
    assert (y[lat:] - x[:-lat]).abs().max() > 0.1


def deepfilternet_reference(model: DFN3, audio: torch.Tensor) -> torch.Tensor:
    """DfNet.forward's indexing, written out: the network output for frame t is the one computed
    on features up to t + conv_lookahead (pad_feat, here as a shift of the outputs, so the first
    conv_lookahead frames warm the network up as they do streaming), the ERB gains multiply
    frame t, and the deep filter's taps are the frames of the spectrum padded by
    (df_order - 1 - df_lookahead, df_lookahead) and unfolded (MultiFrameModule). Output not
    delayed by the look-ahead: sample n estimates input n - (fft - hop)."""
    cfg = model.cfg
    state = model.initial_state(1)
    spec, _ = stft_analysis(audio, state["analysis_mem"], model.window)
    feat_erb, _ = erb_features(spec, model.erb_mean, state["erb_norm"], model.alpha)
    feat_cplx, _ = unit_norm_features(spec[..., :cfg.nb_df], state["unit_norm"], model.alpha)
    erb_in = torch.cat([state["erb_ctx"], feat_erb], dim=1)
    spec_in = torch.cat([state["spec_ctx"], torch.view_as_real(feat_cplx)], dim=1)
    e0, e1, e2, e3, emb, c0, _, _ = model.enc(erb_in, spec_in, state["h_enc"])
    gains, _ = model.erb_dec(emb, e3, e2, e1, e0, state["h_erb"])
    coefs, _, _ = model.df_dec(emb, c0, state["df_acc"], state["h_df"])
    frames = spec.shape[1]
    pad = torch.zeros(1, frames + cfg.conv_lookahead, *gains.shape[2:])
    gains = torch.cat([gains, pad[:, :cfg.conv_lookahead]], dim=1)[:, cfg.conv_lookahead:]
    coefs = torch.cat([coefs, torch.zeros(1, cfg.conv_lookahead, *coefs.shape[2:])],
                      dim=1)[:, cfg.conv_lookahead:]
    enhanced = spec * (gains @ model.erb_expand)
    low = spec[..., :cfg.nb_df]
    padded = torch.cat([torch.zeros_like(low[:, :cfg.df_order - 1 - cfg.df_lookahead]), low,
                        torch.zeros_like(low[:, :cfg.df_lookahead])], dim=1)
    c = torch.view_as_complex(coefs.contiguous())  # [1, T, F, order]
    filtered = sum(padded[:, o:o + frames] * c[..., o] for o in range(cfg.df_order))
    enhanced = torch.cat([filtered, enhanced[..., cfg.nb_df:]], dim=-1)
    return stft_synthesis(enhanced, state["synthesis_mem"], model.window)[0]


@torch.no_grad()
@pytest.mark.parametrize(("conv", "df"), [(0, 0), (1, 1), (2, 2), (0, 2), (2, 0), (1, 2)])
def test_equals_deepfilternet_definition(conv: int, df: int) -> None:
    """Random weights (DF taps all active): the streaming model's output equals the reference
    indexing delayed by the look-ahead, from the first sample that estimates input time 0 (before
    that, streaming also outputs frames -L..-1, whose deep filter reaches into frame 0; the
    reference has no such frames); stepping equals offline."""
    model = random_model(config(conv, df))
    audio = torch.from_numpy(noisy_example(1.0))[None]
    ours = model(audio)
    ref = deepfilternet_reference(model, audio)
    start, shift = model.cfg.fft_size - HOP, model.latency_samples - (model.cfg.fft_size - HOP)
    assert ref.abs().max() > 1e-3
    assert torch.allclose(ours[:, start + shift:], ref[:, start:ref.shape[1] - shift], atol=1e-5,
                          rtol=0)
    assert torch.allclose(stepped(model, audio), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("conv", "df"), PAIRS)
def test_impulse_latency_random_weights(conv: int, df: int) -> None:
    model = random_model(config(conv, df))
    assert click_peaks(model) == [model.latency_samples] * 3


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return noisy_example(3.0)


@pytest.mark.parametrize(("conv", "df"), [(1, 1), (0, 0), (0, 1)])
def test_shipped_weights_at_lower_lookahead(conv: int, df: int, speech: np.ndarray) -> None:
    """The shipped weights (trained at 2, 2) loaded through `load_dfn3(config=...)`: the click
    and the speech (SI-SDR against the input over lags) both come out at latency_samples.
    Loaded as they are, the same weights put their deep filter's direct path on tap 2, which at
    a lower df_lookahead is an older frame: the speech (low band) stays at 1440."""
    model = load_dfn3(config=config(conv, df))
    assert model.latency_samples == 480 + 480 * max(conv, df)
    assert model.provenance["trained_lookaheads"] == {"conv_lookahead": 2, "df_lookahead": 2}
    assert click_peaks(model) == [model.latency_samples] * 3
    with torch.no_grad():
        y = model(torch.from_numpy(speech)[None])[0].numpy()
    assert best_lag(speech, y) == model.latency_samples
    as_is = DFN3(config(conv, df))
    as_is.load_state_dict(load_dfn3().state_dict())
    assert click_peaks(as_is.eval()) == [model.latency_samples] * 3  # the high band
    with torch.no_grad():
        y = as_is(torch.from_numpy(speech)[None])[0].numpy()
    assert best_lag(speech, y) == 1440


def test_retarget_moves_taps_and_back() -> None:
    weights = random_model(DFN3Config()).state_dict()
    down = retarget_df_lookahead(weights, 5, 2, 0)
    back = retarget_df_lookahead(down, 5, 0, 2)
    bias, moved = weights["df_dec.df_convp.pw.bias"], down["df_dec.df_convp.pw.bias"]
    assert torch.equal(moved[4:], bias[:6]) and torch.equal(moved[:4], torch.zeros(4))
    # Taps 0-2 survive the round trip; taps 3, 4 (frames t+1, t+2) are gone at look-ahead 0.
    assert torch.equal(back["df_dec.df_convp.pw.bias"][:6], bias[:6])
    assert torch.equal(back["df_dec.df_convp.pw.bias"][6:], torch.zeros(4))
    out_w = back["df_dec.df_out.weight"].reshape(16, 16, -1, 10)
    assert torch.equal(out_w[..., :6], weights["df_dec.df_out.weight"].reshape(16, 16, -1, 10)[
        ..., :6])
    assert all(torch.equal(weights[k], down[k]) for k in weights if "df_out" not in k
               and "df_convp.pw" not in k)
    with pytest.raises(ValueError):
        retarget_df_lookahead(weights, 5, 2, 5)


def test_shipped_config_and_state_unchanged() -> None:
    """The shipped model keeps look-ahead (2, 2), 1440 samples and its state layout (no held
    network outputs); a df_lookahead above conv_lookahead holds them."""
    model = load_dfn3()
    assert model.cfg == DFN3Config() and model.latency_samples == 1440
    assert set(model.initial_state(1)) == {
        "analysis_mem", "synthesis_mem", "erb_norm", "unit_norm", "erb_ctx", "spec_ctx",
        "df_acc", "h_enc", "h_erb", "h_df", "spec_hist"}
    assert model.initial_state(1)["spec_hist"].shape == (1, 4, 481, 2)
    held = DFN3(config(0, 2)).initial_state(3)
    assert held["gains_hist"].shape == (3, 2, 32)
    assert held["coefs_hist"].shape == (3, 2, 96, 5, 2)


@pytest.mark.parametrize("bad", [
    {"conv_lookahead": -1}, {"df_lookahead": 5}, {"df_lookahead": -1}, {"fft_size": 1024},
    {"conv_lookahead": 1.0}, {"conv_lookahead": "1"}, {"nb_erb": 30}, {"hop_size": 0},
    {"df_lookahead": True},
])
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DFN3Config(**bad)


def test_load_dfn3_round_trip_lookahead_1(tmp_path: Path) -> None:
    """A look-ahead-1 model written by training's export loads back with its config (dict),
    latency 960 and the same output; the shipped file still loads as DFN3Config()."""
    cfg = config(1, 1)
    model = random_model(cfg, seed=3)
    path = export_weights(model, tmp_path / "run", {"lookahead": 1})
    loaded = load_dfn3(path)
    assert loaded.cfg == cfg and loaded.latency_samples == 960
    assert torch.load(path, weights_only=True)["config"]["conv_lookahead"] == 1
    audio = torch.from_numpy(noisy_example(0.5))[None]
    with torch.no_grad():
        assert torch.equal(loaded(audio), model(audio))
    assert click_peaks(loaded) == [960] * 3
    assert load_dfn3().cfg == DFN3Config()


def test_load_dfn3_rejects_bad_configs(tmp_path: Path) -> None:
    weights = {k: v.clone() for k, v in load_dfn3().state_dict().items()}

    def write(cfg: object) -> Path:
        path = tmp_path / "ckpt.pt"
        torch.save({"state_dict": weights, "provenance": {}, "config": cfg}, path)
        return path

    good = dataclasses.asdict(config(0, 0))
    for bad in ({**good, "lookahead": 1}, {**good, "df_lookahead": 7}, {**good, "conv_ch": 32},
                "DFN3Config(conv_lookahead=0)", [1, 2]):
        with pytest.raises(ValueError, match=r"ckpt\.pt"):
            load_dfn3(write(bad))
    path = write(good)
    assert load_dfn3(path).latency_samples == 480
    with pytest.raises(ValueError, match="more than the look-aheads"):
        load_dfn3(path, config=dataclasses.replace(DFN3Config(), nb_df=64))
    torch.save({"weights": weights}, path)
    with pytest.raises(ValueError, match="not a DFN3 checkpoint"):
        load_dfn3(path)


def test_default_model_at_a_lower_lookahead() -> None:
    from denoiser.model.weights import load_default_model

    assert load_default_model().latency_samples == 960  # fine-tuned at look-ahead 1
    assert load_default_model(lookahead=2).latency_samples == 1440
    assert load_default_model(weights="dfn3.pt").latency_samples == 1440  # the original
    assert load_default_model(weights="dfn3.pt", lookahead=1).latency_samples == 960
