"""Our DFN3 encoder / ERB decoder / DF decoder equal the exported ONNX graphs (onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from denoiser.eval.dfn3_reference import OnnxDFN3
from denoiser.model.dfn3 import DFN3
from denoiser.model.dfn3.features import erb_features, stft_analysis, unit_norm_features
from denoiser.model.dfn3.layers import depthwise_freq, depthwise_freq_transposed
from denoiser.model.weights import load_dfn3
from denoiser.training.import_onnx import convert
from support.sample_audio import noisy_example

torch.set_num_threads(1)


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-300)))


@pytest.fixture(scope="module")
def converted() -> tuple[DFN3, dict]:
    state, provenance = convert()
    model = DFN3()
    model.load_state_dict(state)
    return model.eval(), provenance


@pytest.fixture(scope="module")
def onnx_ref() -> OnnxDFN3:
    return OnnxDFN3()


@pytest.fixture(scope="module")
def features(converted: tuple[DFN3, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Real features of a 2 s noisy clip: feat_erb [1, T, 32], feat_spec [1, T, 96, 2]."""
    model, _ = converted
    audio = torch.from_numpy(noisy_example(2.0))[None]
    state = model.initial_state(1)
    spec, _ = stft_analysis(audio, state["analysis_mem"], model.window)
    erb, _ = erb_features(spec, model.erb_mean, state["erb_norm"], model.alpha)
    cplx, _ = unit_norm_features(spec[..., :96], state["unit_norm"], model.alpha)
    return erb, torch.view_as_real(cplx)


def _pad_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Zero past frames on dim 1 (as the ONNX graphs pad)."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (frames, 0))


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """Our channels-last [B, T, F, C] -> the ONNX layout [B, C, T, F]."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 2, 3, 1).contiguous()


def _onnx_enc(onnx_ref: OnnxDFN3, feat_erb: torch.Tensor, feat_spec: torch.Tensor) -> dict:
    return onnx_ref.run("enc", feat_erb=feat_erb[:, None].numpy(),
                        feat_spec=feat_spec.permute(0, 3, 1, 2).contiguous().numpy())


@torch.no_grad()
def test_encoder_equals_onnx(converted, onnx_ref, features) -> None:
    model, _ = converted
    feat_erb, feat_spec = features
    ref = _onnx_enc(onnx_ref, feat_erb, feat_spec)
    outs = list(model.enc(_pad_time(feat_erb, 2), _pad_time(feat_spec, 2),
                          torch.zeros(1, 1, 256)))
    outs = [_nchw(o) for o in outs[:4]] + [outs[4], _nchw(outs[5]), outs[6][..., None]]
    for name, ours in zip(("e0", "e1", "e2", "e3", "emb", "c0", "lsnr"), outs, strict=True):
        assert ours.shape == ref[name].shape, name
        assert snr_db(ref[name], ours.numpy()) > 100, name
    assert ref["lsnr"].std() > 1.0  # a real clip: the SNR estimate moves


@torch.no_grad()
def test_erb_decoder_equals_onnx(converted, onnx_ref, features) -> None:
    model, _ = converted
    feat_erb, feat_spec = features
    enc = _onnx_enc(onnx_ref, feat_erb, feat_spec)
    names = ("emb", "e3", "e2", "e1", "e0")
    ref = onnx_ref.run("erb_dec", **{k: enc[k] for k in names})["m"][:, 0]
    skips = [_nhwc(enc[k]) for k in names[1:]]
    ours, _ = model.erb_dec(torch.from_numpy(enc["emb"]), *skips, torch.zeros(1, 2, 256))
    assert ours.shape == ref.shape
    assert np.abs(ours.numpy() - ref).max() < 1e-5
    assert ref.min() < 0.1 and ref.max() > 0.9  # the gains really vary


@torch.no_grad()
def test_df_decoder_equals_onnx(converted, onnx_ref, features) -> None:
    model, _ = converted
    feat_erb, feat_spec = features
    enc = _onnx_enc(onnx_ref, feat_erb, feat_spec)
    ref = onnx_ref.run("df_dec", emb=enc["emb"], c0=enc["c0"])["coefs"]
    c0 = _nhwc(enc["c0"])
    ours, _, _ = model.df_dec(torch.from_numpy(enc["emb"]), c0,
                              model.df_dec.initial_acc(1, "cpu", torch.float32),
                              torch.zeros(1, 2, 256))
    ours = ours.reshape(ref.shape).numpy()
    assert snr_db(ref, ours) > 100


@torch.no_grad()
def test_df_pathway_running_sums_equal_the_time_conv(converted, onnx_ref, features) -> None:
    """The DF pathway keeps running sums instead of past c0 frames. Its pre-ReLU output must
    equal the grouped time conv + 1x1 conv (torch's Conv2d on zero-padded frames), whether
    the sequence comes whole or in pieces (1 frame as when streaming, or several). Checked
    before the ReLU: with the shipped weights the pathway's ReLU is closed on this clip."""
    model, _ = converted
    dec = model.df_dec
    c0 = _nhwc(_onnx_enc(onnx_ref, *features)["c0"])  # [1, T, 96, 64]
    pad = F.pad(_nchw(c0), (0, 0, dec.context, 0))
    convp = dec.df_convp
    ref = F.conv2d(F.conv2d(pad, convp.dw.weight, groups=convp.dw.groups), convp.pw.weight)
    ref = ref.permute(0, 2, 3, 1).numpy()  # [1, T, 96, 10], before the bias and ReLU
    acc = dec.initial_acc(1, "cpu", torch.float32)
    whole, _ = dec.pathway(c0, acc)
    assert snr_db(ref, whole.numpy()) > 100
    parts, start = [], 0
    for size in (1, 3, 1, 1, 7, c0.shape[1]):
        end = min(start + size, c0.shape[1])
        path, acc = dec.pathway(c0[:, start:end], acc)
        parts.append(path)
        start = end
    assert start == c0.shape[1]
    assert snr_db(ref, torch.cat(parts, dim=1).numpy()) > 100


@pytest.mark.parametrize("freqs", [1, 2, 3, 7, 8, 16, 96])
def test_depthwise_freq_convs_equal_torch_convs(freqs: int) -> None:
    """The slice-and-add depthwise convs equal grouped Conv2d / ConvTranspose2d."""
    torch.manual_seed(freqs)
    x, w = torch.randn(2, 3, freqs, 5), torch.randn(5, 1, 1, 3)
    nchw = x.permute(0, 3, 1, 2)
    for stride in (1, 2):
        ref = F.conv2d(nchw, w, stride=(1, stride), padding=(0, 1), groups=5)
        assert torch.allclose(depthwise_freq(x, w, stride), _nhwc(ref.numpy()), atol=1e-6)
    ref = F.conv_transpose2d(nchw, w, stride=(1, 2), padding=(0, 1), output_padding=(0, 1),
                             groups=5)
    assert torch.allclose(depthwise_freq_transposed(x, w), _nhwc(ref.numpy()), atol=1e-6)


def test_shipped_weights_are_the_converted_ones(converted) -> None:
    model, provenance = converted
    shipped = load_dfn3()
    assert shipped.provenance["archive_sha256"] == provenance["archive_sha256"]
    for name, value in model.state_dict().items():
        stored = shipped.state_dict()[name]
        assert torch.equal(stored, value.half().float()), name
