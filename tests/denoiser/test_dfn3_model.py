"""The full DFN3 model: equals libDF's C runtime, steps like it runs offline, batches exactly,
and its declared latency is what an impulse measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denoiser.eval.dfn3_reference import LibDF
from denoiser.model.dfn3 import DFN3
from denoiser.model.weights import load_default_model, load_dfn3
from support.sample_audio import noisy_example

torch.set_num_threads(1)
HOP = 480


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-300)))


@pytest.fixture(scope="module")
def model() -> DFN3:
    return load_dfn3()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return noisy_example(3.0)


@torch.no_grad()
@pytest.mark.parametrize("atten_lim_db", [None, 12.0])
def test_equals_libdf(clip: np.ndarray, atten_lim_db: float | None) -> None:
    """libDF's df_create: post-filter off; atten_lim 100 dB means no limit (our None)."""
    ours = load_dfn3(atten_lim_db=atten_lim_db)(torch.from_numpy(clip)[None])[0].numpy()
    ref, lsnr = LibDF(100.0 if atten_lim_db is None else atten_lim_db).process(clip)
    err = snr_db(ref, ours)
    print(f"DFN3 (fp16-stored weights) vs libdeepfilter.so, atten_lim={atten_lim_db}: "
          f"difference {err:.1f} dB below the output")
    assert err > 40.0
    # It really denoises: the output differs from the delayed input by much more than that.
    delayed = np.concatenate([np.zeros(1440, np.float32), clip[:-1440]])
    assert snr_db(delayed, ours) < 20.0
    assert lsnr.min() < 5.0 < lsnr.max()


@torch.no_grad()
def test_step_equals_forward(model: DFN3, clip: np.ndarray) -> None:
    audio = torch.from_numpy(clip[: 100 * HOP])[None]
    offline = model(audio)
    state = model.initial_state(1)
    outs = []
    for hop in audio.split(HOP, dim=1):
        out, state = model.step(hop, state)
        outs.append(out)
    stepped = torch.cat(outs, dim=1)
    assert snr_db(offline.numpy(), stepped.numpy()) > 90.0


@torch.no_grad()
def test_batch_equals_single_streams(model: DFN3, clip: np.ndarray) -> None:
    """Three different streams in one batch give what each gives alone; the state passed in is
    never mutated (the returned one may view this step's fresh tensors)."""
    n = 60 * HOP
    streams = torch.stack([torch.from_numpy(clip[:n]), torch.from_numpy(clip[n:2 * n]) * 0.3,
                           torch.from_numpy(clip[2 * n:3 * n][::-1].copy())])
    batch_state = model.initial_state(3)
    singles = [model.initial_state(1) for _ in range(3)]
    before = {k: v.clone() for k, v in batch_state.items()}
    batch_out, single_out = [], [[] for _ in range(3)]
    for i in range(n // HOP):
        hop = streams[:, i * HOP:(i + 1) * HOP]
        out, new_state = model.step(hop, batch_state)
        assert all(torch.equal(before[k], batch_state[k]) for k in before), i
        batch_state = new_state
        before = {k: v.clone() for k, v in batch_state.items()}
        batch_out.append(out)
        for s in range(3):
            o, singles[s] = model.step(hop[s:s + 1], singles[s])
            single_out[s].append(o)
    batch_audio = torch.cat(batch_out, dim=1)
    for s in range(3):
        alone = torch.cat(single_out[s], dim=1)[0]
        assert torch.allclose(batch_audio[s], alone, atol=1e-5, rtol=0), s
    assert (batch_audio[0] - batch_audio[1]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("hops_per_call", [1, 2, 3])
def test_step_many_equals_stepping(model: DFN3, clip: np.ndarray, hops_per_call: int) -> None:
    """T hops in one `step_many` call give what T steps give (float32 rounding: the features of
    T frames come out of one matmul), for a batch of different streams, leaving the state
    passed in untouched; so does `process` over the same T hops."""
    n = 30 * HOP
    streams = torch.stack([torch.from_numpy(clip[:n]), torch.from_numpy(clip[n:2 * n]) * 0.3])
    stepped_state, many_state, seq_state = (model.initial_state(2) for _ in range(3))
    stepped, many, seq = [], [], []
    chunk = hops_per_call * HOP
    for i in range(0, n, chunk):
        block = streams[:, i:i + chunk]
        for hop in block.split(HOP, dim=1):
            out, stepped_state = model.step(hop, stepped_state)
            stepped.append(out)
        passed_in = many_state
        before = {k: v.clone() for k, v in passed_in.items()}
        out, many_state = model.step_many(block, passed_in)
        assert out.shape == block.shape
        assert all(torch.equal(before[k], passed_in[k]) for k in before), i
        many.append(out)
        out, seq_state, _ = model.process(block, seq_state)
        seq.append(out)
    reference = torch.cat(stepped, dim=1)
    for got in (torch.cat(many, dim=1), torch.cat(seq, dim=1)):
        torch.testing.assert_close(got, reference, atol=1e-6, rtol=0)
    for name, value in stepped_state.items():
        torch.testing.assert_close(many_state[name], value, atol=1e-5, rtol=1e-5)
    assert (reference[0] - reference[1]).abs().max() > 1e-3


@torch.no_grad()
def test_impulse_latency(model: DFN3, clip: np.ndarray) -> None:
    """A click rides on quiet noise (the model passes it, as it is not noise-like); the output's
    peak lands exactly latency_samples later, for several offsets within a hop."""
    assert model.latency_samples == 1440
    rng = np.random.default_rng(0)
    for offset in (24_000, 24_137, 24_479):
        x = (rng.standard_normal(96_000) * 1e-3).astype(np.float32)
        x[offset] = 0.9
        y = model(torch.from_numpy(x)[None])[0].numpy()
        assert int(np.argmax(np.abs(y))) == offset + model.latency_samples


def test_bad_input_is_rejected(model: DFN3) -> None:
    state = model.initial_state(2)
    with pytest.raises(ValueError):
        model.step(torch.zeros(2, 479), state)
    with pytest.raises(ValueError):
        model.step(torch.zeros(480), state)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1000))


def test_default_model_is_dfn3_in_eval_mode() -> None:
    model = load_default_model("cpu")
    assert isinstance(model, DFN3) and not model.training
    assert model.sample_rate == 48_000 and model.hop_size == HOP
    state = model.initial_state(4)
    assert all(v.shape[0] == 4 for v in state.values())


def test_weight_changes_reach_the_cached_matrices(clip: np.ndarray) -> None:
    """Folded conv matrices are cached between steps; new weights (load_state_dict, as after
    training) must be used at once, and the offline forward must stay differentiable."""
    hops = torch.from_numpy(clip[: 3 * HOP]).reshape(1, 3, HOP)[0]
    stale = load_dfn3()
    with torch.no_grad():
        stale.step(hops[:1], stale.initial_state(1))  # fills the caches
    weights = {k: v * 1.1 if "df_conv" in k or "erb_conv0" in k else v
               for k, v in stale.state_dict().items()}
    stale.load_state_dict(weights)
    fresh = DFN3()
    fresh.load_state_dict(weights)
    fresh.eval()
    with torch.no_grad():
        a, b = stale.initial_state(1), fresh.initial_state(1)
        for hop in hops:
            out_a, a = stale.step(hop[None], a)
            out_b, b = fresh.step(hop[None], b)
            assert torch.equal(out_a, out_b)
    trained = load_dfn3().requires_grad_(True)
    trained(torch.from_numpy(clip[: 20 * HOP])[None]).square().sum().backward()
    for conv in (trained.enc.df_conv0.dw, trained.enc.df_conv0.pw, trained.enc.erb_conv0):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # The DF pathway's ReLU is closed on this clip (zero gradient), but its graph is intact.
    assert trained.df_dec.df_convp.dw.weight.grad is not None
