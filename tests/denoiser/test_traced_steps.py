"""The CPU engine runs traceable models traced (`denoiser.model.traced`): same output as eager
for the shipped DFN3 at every batch size and chunking, and an eager fallback for models that
cannot be traced or whose graph would differ."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from denoiser.engine.local import LocalEngine
from denoiser.model.traced import TracedSteps
from denoiser.model.weights import load_default_model
from support.models import HOP, GainModel, TinyConvGRU
from support.sample_audio import noisy_example

torch.set_num_threads(1)


def speechlike(seed: int, hops: int) -> np.ndarray:
    """Noise with a moving envelope (for the toy models)."""
    rng = np.random.default_rng(seed)
    envelope = np.repeat(rng.uniform(0.01, 0.3, hops), HOP)
    return (rng.standard_normal(hops * HOP) * envelope).astype(np.float32)


def noisy_speech(start_hop: int, hops: int) -> np.ndarray:
    """Real speech in recorded noise, a different stretch per stream."""
    return noisy_example(3.0)[start_hop * HOP:(start_hop + hops) * HOP]


async def run_streams(engine: LocalEngine, inputs: list[np.ndarray],
                      chunks: list[int]) -> list[np.ndarray]:
    async def feed(sid: str, x: np.ndarray, chunk: int) -> np.ndarray:
        outs = []
        for i in range(0, x.size, chunk * HOP):
            outs.append(await engine.process(sid, x[i:i + chunk * HOP]))
        return np.concatenate(outs)

    for i in range(len(inputs)):
        engine.open_stream(f"s{i}")
    return list(await asyncio.gather(*(feed(f"s{i}", x, c)
                                       for i, (x, c) in enumerate(zip(inputs, chunks,
                                                                      strict=True)))))


async def test_the_shipped_model_runs_traced_and_equals_eager() -> None:
    """Three streams at once in 1-, 2- and 3-hop requests (ticks of batch 3, 2 and 1), then one
    stream alone in 3-, 5- and 6-hop requests (hop counts not traced: made of 1 and 2):
    traced output equals the eager engine's, and no graph is traced after start (before, the
    first 3-hop call traced one on the live tick, ~1 s with every stream waiting)."""
    inputs = [noisy_speech(60 + 60 * i, 60) for i in range(3)]
    chunks = [1, 2, 3]
    outputs = {}
    for trace in (True, False):
        async with LocalEngine(load_default_model("cpu"), device="cpu", max_streams=4,
                               tick_deadline=0.05, trace=trace) as engine:
            together = await run_streams(engine, inputs, chunks)
            engine.close_stream("s0")
            engine.open_stream("alone")
            alone, start, sizes = [], 0, [3, 5, 6]
            while start < inputs[0].size:
                size = sizes[len(alone) % 3] * HOP
                alone.append(await engine.process("alone", inputs[0][start:start + size]))
                start += size
            outputs[trace] = (together, np.concatenate(alone))
            if trace:
                assert engine.steps is not None
                assert engine.steps.traced == [1, 2] and not engine.steps.fallbacks
                assert engine.compiles == {"start": 2, "serving": 0}
            else:
                assert engine.steps is None
    (traced, traced_alone), (eager, eager_alone) = outputs[True], outputs[False]
    for t, e in zip([*traced, traced_alone], [*eager, eager_alone], strict=True):
        assert np.abs(e).max() > 0.05  # speech came through
        np.testing.assert_allclose(t, e, atol=1e-5, rtol=1e-4)


def test_models_are_traced_only_where_they_say_they_can_be() -> None:
    assert LocalEngine(load_default_model("cpu"), device="cpu").trace
    assert not LocalEngine(TinyConvGRU().eval(), device="cpu").trace
    assert not LocalEngine(load_default_model("cpu"), device="cpu", trace=False).trace


class Untraceable(GainModel):
    """Refuses to be traced (as a model calling into numpy would fail)."""

    def step(self, hops, state):  # type: ignore[no-untyped-def]
        if torch.jit.is_tracing():
            raise RuntimeError("cannot trace this")
        return super().step(hops, state)


class DiffersWhenTraced(GainModel):
    """Its graph computes something else than its eager step (a frozen data-dependent branch
    behaves like this)."""

    def step(self, hops, state):  # type: ignore[no-untyped-def]
        out, state = super().step(hops, state)
        return (out * 2 if torch.jit.is_tracing() else out), state


@pytest.mark.parametrize(("model", "why"), [(Untraceable(gain=0.5), "cannot trace this"),
                                            (DiffersWhenTraced(gain=0.5), "differs from eager")])
def test_a_model_that_does_not_trace_runs_eager(model: GainModel, why: str) -> None:
    steps = TracedSteps(model.eval())
    hops = torch.from_numpy(speechlike(5, 2))[None]
    with torch.inference_mode():
        out, _ = steps(hops, model.initial_state(1))
        expected, _ = model.step_many(hops, model.initial_state(1))
    assert why in steps.fallbacks[2] and steps.traced == []
    torch.testing.assert_close(out, expected)
