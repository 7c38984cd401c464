"""The small rung (GTCRN48): the port equals GTCRN's own ONNX runtime, it obeys the streaming
contract (batch = singles, stepping = offline, declared latency, fresh state), runs in the
engine, and loads by its rung name. No corpus needed: the test audio is synthesised."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from denoiser.engine.local import LocalEngine
from denoiser.model.gtcrn import GTCRN48, load_gtcrn48
from denoiser.model.gtcrn.network import GTCRNCore, apply_mask
from denoiser.model.weights import SMALL_WEIGHTS, load_default_model, weights_path

torch.set_num_threads(1)
HOP = 480
SR = 48_000


def voiced(seconds: float, seed: int = 0, snr_db: float = 5.0) -> np.ndarray:
    """Speech-like audio: harmonics of a gliding pitch, syllable-rate bursts, in noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR) // HOP * HOP
    t = np.arange(n) / SR
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 30) if k * 180 < 7500)
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    speech = voice * envelope
    noise = rng.standard_normal(n)
    speech *= 0.05 / np.sqrt(np.mean(speech**2))
    noise *= 0.05 / np.sqrt(np.mean(noise**2)) / 10 ** (snr_db / 20)
    return (speech + noise).astype(np.float32)


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-300)))


def level_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


@pytest.fixture(scope="module")
def model() -> GTCRN48:
    return load_default_model(weights="small")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return voiced(2.0)


def run(model: GTCRN48, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None])[0].numpy()


def test_rung_name_loads_the_shipped_small_model(model: GTCRN48) -> None:
    assert weights_path("small").name == SMALL_WEIGHTS and weights_path("small").is_file()
    assert isinstance(model, GTCRN48) and not model.training
    assert model.latency_samples == 960 and model.hop_size == HOP and model.sample_rate == SR
    assert sum(p.numel() for p in model.parameters()) < 60_000
    with pytest.raises(ValueError, match="fixed latency"):
        load_default_model(weights="small", lookahead=0)


@torch.no_grad()
def test_port_equals_gtcrn_onnx_runtime() -> None:
    """Our network on GTCRN's published weights against its own streaming ONNX graph, frame by
    frame with its caches, on a real 16 kHz STFT: the same numbers (> 100 dB)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from denoiser.training.import_gtcrn import onnx_path, state_dict_from_onnx
    try:
        path = onnx_path()
    except FileNotFoundError as exc:
        pytest.skip(f"GTCRN's wheel is not installed: {exc}")
    x = voiced(1.0)[::3].copy()  # 16 kHz
    spec = torch.view_as_real(torch.stft(torch.from_numpy(x), 512, 256, 512,
                                         torch.hann_window(512).sqrt(), return_complex=True))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    caches = {"conv_cache": np.zeros((2, 1, 16, 16, 33), np.float32),
              "tra_cache": np.zeros((2, 3, 1, 1, 16), np.float32),
              "inter_cache": np.zeros((2, 1, 33, 16), np.float32)}
    ref = []
    for t in range(spec.shape[1]):
        enh, *rest = sess.run(None, {"mix": spec[None, :, t:t + 1].numpy(), **caches})
        caches = dict(zip(caches, rest, strict=True))
        ref.append(enh[0, :, 0])
    expected = np.stack(ref, 1)
    core = GTCRNCore()
    core.load_state_dict(state_dict_from_onnx())
    frames = spec.permute(1, 0, 2)[None]
    mask, _ = core.eval()(frames, core.initial_state(1))
    ours = apply_mask(frames, mask)[0].permute(1, 0, 2).numpy()
    assert snr_db(expected, ours) > 100


@torch.no_grad()
def test_step_many_and_forward_equal_stepping(model: GTCRN48, clip: np.ndarray) -> None:
    state = model.initial_state(1)
    stepped = []
    for hop in torch.from_numpy(clip)[None].split(HOP, dim=1):
        out, state = model.step(hop, state)
        stepped.append(out)
    single = torch.cat(stepped, 1)[0].numpy()
    assert snr_db(single, run(model, clip)) > 90
    for per_call in (2, 3):
        state, outs = model.initial_state(1), []
        for chunk in torch.from_numpy(clip)[None].split(per_call * HOP, dim=1):
            out, state = model.step_many(chunk, state)
            outs.append(out)
        assert snr_db(single, torch.cat(outs, 1)[0].numpy()) > 90


@torch.no_grad()
def test_batch_equals_single_streams_and_state_is_not_mutated(model: GTCRN48) -> None:
    clips = np.stack([voiced(1.0, seed=s) for s in range(3)])
    state = model.initial_state(3)
    before = {k: v.clone() for k, v in state.items()}
    outs = []
    for hop in torch.from_numpy(clips).split(HOP, dim=1):
        out, new_state = model.step_many(hop, state)
        for k in state:  # the input state is never written to
            assert torch.equal(state[k], before[k])
        state, before = new_state, {k: v.clone() for k, v in new_state.items()}
        outs.append(out)
    batched = torch.cat(outs, 1).numpy()
    for i in range(3):
        assert snr_db(run(model, clips[i]), batched[i]) > 90
    assert snr_db(batched[0], batched[1]) < 20  # the streams really are different


@torch.no_grad()
def test_fresh_state_resets_the_stream(model: GTCRN48, clip: np.ndarray) -> None:
    """After a whole clip, a fresh `initial_state` gives exactly the first run's output: the
    model keeps nothing between calls outside the state."""
    first = run(model, clip)
    run(model, voiced(1.0, seed=5))
    assert np.array_equal(first, run(model, clip))
    state = model.initial_state(2)
    assert all(v.shape[0] == 2 and not v.any() for v in state.values())


@torch.no_grad()
def test_windows_reconstruct_with_the_declared_latency() -> None:
    """With the network's mask forced to 1 (and the high band passed), the output is the input
    delayed by exactly latency_samples: the asymmetric windows overlap-add to one."""
    for hops in (2, 3):
        from denoiser.model.gtcrn import GTCRN48Config
        m = GTCRN48(GTCRN48Config(support_hops=hops)).eval()

        def identity(spec: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
            ones = torch.zeros_like(spec)
            ones[..., 0] = 1.0
            return ones, state

        m.core.forward = identity  # type: ignore[method-assign]
        x = voiced(0.5, seed=hops)
        y = run(m, x)
        lat = m.latency_samples
        assert lat == (hops - 1) * HOP
        assert snr_db(x[:-lat], y[lat:]) > 80


@torch.no_grad()
def test_impulse_latency(model: GTCRN48) -> None:
    """A click on quiet noise comes out latency_samples later, at several offsets in a hop."""
    rng = np.random.default_rng(0)
    for offset in (24_000, 24_137, 24_479):
        x = (rng.standard_normal(48_000) * 1e-3).astype(np.float32)
        x[offset] = 0.9
        y = run(model, x)
        assert int(np.argmax(np.abs(y))) == offset + model.latency_samples


@torch.no_grad()
def test_denoises_noise(model: GTCRN48) -> None:
    """Noise alone is cut deeply; the voiced clip keeps most of its level."""
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(SR) * 0.02).astype(np.float32)
    out = run(model, noise)[SR // 4:]
    assert level_db(out) < level_db(noise[SR // 4:]) - 10
    clip = voiced(1.0, snr_db=30.0)
    assert level_db(run(model, clip)) > level_db(clip) - 6


def test_runs_in_the_local_engine(model: GTCRN48) -> None:
    """Two streams through LocalEngine (2-hop requests, batched) equal the model offline."""
    clips = [voiced(1.0, seed=s) for s in (7, 8)]

    async def main() -> list[np.ndarray]:
        engine = LocalEngine(model, device="cpu", max_streams=4, threads=1)
        await engine.start()
        try:
            async def feed(sid: str, x: np.ndarray) -> np.ndarray:
                engine.open_stream(sid)
                outs = [await engine.process(sid, x[i:i + 2 * HOP])
                        for i in range(0, x.size, 2 * HOP)]
                return np.concatenate(outs)
            return list(await asyncio.gather(feed("a", clips[0]), feed("b", clips[1])))
        finally:
            await engine.close()

    for x, y in zip(clips, asyncio.run(main()), strict=True):
        assert snr_db(run(model, x), y) > 60


def test_bad_checkpoint_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"model": "gtcrn48", "state_dict": {"core.en0.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="do not fit GTCRN48"):
        load_gtcrn48(path)
    with pytest.raises(ValueError, match="GTCRN48"):
        load_default_model(weights=str(path))
