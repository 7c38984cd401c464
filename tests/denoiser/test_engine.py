"""LocalEngine on CPU with a tiny real conv+GRU model: batching, state isolation, errors."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from denoiser.engine import EngineError, EngineFull
from denoiser.engine.capacity import default_buckets
from denoiser.engine.local import LocalEngine
from support.models import HOP, TinyConvGRU, audio, feed, offline

torch.set_num_threads(1)




@pytest.fixture
def model() -> TinyConvGRU:
    return TinyConvGRU().eval()


async def test_batch_of_n_equals_n_singles(model: TinyConvGRU) -> None:
    n, hops = 6, 25
    inputs = [audio(i, hops) for i in range(n)]
    async with LocalEngine(model, device="cpu", max_streams=8, tick_deadline=0.05) as engine:
        for i in range(n):
            engine.open_stream(f"s{i}")
        outs = await asyncio.gather(*(feed(engine, f"s{i}", inputs[i]) for i in range(n)))
        stats = engine.stats.snapshot()
    # Streams really were batched together, not run one by one.
    assert stats["batch_sizes"].get(n, 0) >= hops - 1
    for i in range(n):
        np.testing.assert_allclose(outs[i], offline(model, inputs[i]), atol=2e-6, rtol=1e-5)


async def test_a_codec_frame_of_hops_runs_in_one_tick(model: TinyConvGRU) -> None:
    """Two streams send 20 ms (two hops) and 10 ms at once: one tick, two batched rounds."""
    a, b = audio(20, 2), audio(21, 1)
    async with LocalEngine(model, device="cpu", max_streams=4, tick_deadline=0.05) as engine:
        engine.open_stream("a")
        engine.open_stream("b")
        out_a, out_b = await asyncio.gather(engine.process("a", a), engine.process("b", b))
        stats = engine.stats.snapshot()
    assert stats["ticks"] == 1 and stats["batch_sizes"] == {2: 1, 1: 1}
    np.testing.assert_allclose(out_a, offline(model, a), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(out_b, offline(model, b), atol=2e-6, rtol=1e-5)


async def test_padding_to_buckets_does_not_change_output(model: TinyConvGRU) -> None:
    inputs = [audio(10 + i, 8) for i in range(3)]
    async with LocalEngine(model, device="cpu", max_streams=4, pad_to_bucket=True,
                           tick_deadline=0.05) as engine:
        for i in range(3):
            engine.open_stream(f"s{i}")
        outs = await asyncio.gather(*(feed(engine, f"s{i}", inputs[i]) for i in range(3)))
    for i in range(3):  # batch 3 ran padded to bucket 4 through the scratch slot
        np.testing.assert_allclose(outs[i], offline(model, inputs[i]), atol=2e-6, rtol=1e-5)


async def test_streams_never_share_state_and_slots_are_reset(model: TinyConvGRU) -> None:
    x = audio(1, 12)
    y = audio(2, 12)
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.01) as engine:
        engine.open_stream("a")
        engine.open_stream("b")
        first_a = await feed(engine, "a", x[: 6 * HOP])  # a has history, b has none
        out_b, rest_a = await asyncio.gather(feed(engine, "b", y), feed(engine, "a", x[6 * HOP:]))
        engine.close_stream("a")
        engine.open_stream("c")  # reuses a's slot: must start from fresh state
        out_c = await feed(engine, "c", y)
    np.testing.assert_allclose(np.concatenate([first_a, rest_a]), offline(model, x), atol=2e-6)
    np.testing.assert_allclose(out_b, offline(model, y), atol=2e-6)
    np.testing.assert_allclose(out_c, offline(model, y), atol=2e-6)


async def test_chunking_does_not_change_output(model: TinyConvGRU) -> None:
    x = audio(3, 21)
    results = []
    for chunk in (1, 3, 7, 21):
        async with LocalEngine(model, device="cpu", max_streams=1) as engine:
            engine.open_stream("s")
            results.append(await feed(engine, "s", x, chunk_hops=chunk))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


async def test_table_grows_by_doubling_up_to_max(model: TinyConvGRU) -> None:
    async with LocalEngine(model, device="cpu", max_streams=5, initial_slots=1) as engine:
        seen = []
        for i in range(5):
            engine.open_stream(f"s{i}")
            seen.append(engine.capacity)
        assert seen == [1, 2, 4, 4, 5]
        with pytest.raises(EngineFull):
            engine.open_stream("s5")
        with pytest.raises(EngineError, match="already open"):
            engine.open_stream("s0")
        # Every grown slot holds independent, correct state.
        inputs = [audio(20 + i, 4) for i in range(5)]
        outs = await asyncio.gather(*(feed(engine, f"s{i}", inputs[i]) for i in range(5)))
    for i in range(5):
        np.testing.assert_allclose(outs[i], offline(model, inputs[i]), atol=2e-6)


@pytest.mark.parametrize(("bad", "match"), [
    (np.zeros(HOP, dtype=np.float64), "float32"),
    (np.zeros((2, HOP), dtype=np.float32), "1-D"),
    (np.zeros(HOP + 1, dtype=np.float32), "multiple of the hop"),
    (np.zeros(0, dtype=np.float32), "multiple of the hop"),
    (np.full(HOP, np.nan, dtype=np.float32), "NaN"),
    ([0.0] * HOP, "numpy array"),
])
async def test_bad_input_fails_only_that_caller(model: TinyConvGRU, bad: object,
                                                match: str) -> None:
    x = audio(4, 5)
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.01) as engine:
        engine.open_stream("good")
        engine.open_stream("bad")
        good_task = asyncio.create_task(feed(engine, "good", x))
        with pytest.raises(EngineError, match=match):
            await engine.process("bad", bad)  # type: ignore[arg-type]
        with pytest.raises(EngineError, match="unknown stream"):
            await engine.process("nobody", x[:HOP])
        np.testing.assert_allclose(await good_task, offline(model, x), atol=2e-6)
        assert engine.stats.errors["bad_input"] == 1


class NaNOnLoud(TinyConvGRU):
    """Produces NaN for a stream whose hop peaks above 10 (a model blowing up on one input)."""

    def step(self, hops, state):  # type: ignore[no-untyped-def]
        out, new = super().step(hops, state)
        loud = hops.abs().amax(dim=1, keepdim=True) > 10
        return torch.where(loud, torch.full_like(out, float("nan")), out), new


async def test_non_finite_output_fails_that_stream_and_resets_it() -> None:
    model = NaNOnLoud().eval()
    x = audio(5, 6)
    loud = np.full(HOP, 20.0, dtype=np.float32)
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.05) as engine:
        engine.open_stream("ok")
        engine.open_stream("boom")
        first, boom = await asyncio.gather(engine.process("ok", x[:HOP]),
                                           engine.process("boom", loud),
                                           return_exceptions=True)
        assert isinstance(boom, EngineError) and "non-finite" in str(boom)
        rest = await feed(engine, "ok", x[HOP:])
        after = await feed(engine, "boom", x)  # fresh state after the reset
    np.testing.assert_allclose(np.concatenate([first, rest]), offline(model, x), atol=2e-6)
    np.testing.assert_allclose(after, offline(model, x), atol=2e-6)


async def test_tick_waits_for_all_live_streams_or_the_deadline(model: TinyConvGRU) -> None:
    hop = audio(6, 1)
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.3) as engine:
        engine.open_stream("a")
        await engine.process("a", hop)  # warm up
        t0 = time.perf_counter()
        await engine.process("a", hop)  # the only live stream: closes at once
        alone = time.perf_counter() - t0
        engine.open_stream("idle")
        t0 = time.perf_counter()
        await engine.process("a", hop)  # "idle" never sends: waits for the deadline
        waited = time.perf_counter() - t0
    assert alone < 0.15
    assert 0.28 <= waited < 1.0


async def test_close_fails_pending_and_later_calls(model: TinyConvGRU) -> None:
    engine = LocalEngine(model, device="cpu", max_streams=2, tick_deadline=5.0)
    await engine.start()
    engine.open_stream("a")
    engine.open_stream("idle")  # keeps a's hop waiting for the 5 s deadline
    pending = asyncio.create_task(engine.process("a", audio(7, 1)))
    await asyncio.sleep(0.05)
    await engine.close()
    with pytest.raises(EngineError, match="closed"):
        await pending
    with pytest.raises(EngineError, match="closed"):
        await engine.process("a", audio(7, 1))


async def test_process_before_start_and_backlog_limit(model: TinyConvGRU) -> None:
    engine = LocalEngine(model, device="cpu", max_streams=1, max_pending_hops=4)
    engine.open_stream("a")
    with pytest.raises(EngineError, match="not started"):
        await engine.process("a", audio(8, 1))
    async with engine:
        with pytest.raises(EngineError, match="limit 4"):
            await engine.process("a", audio(8, 5))
        assert (await engine.process("a", audio(8, 4))).shape == (4 * HOP,)


def test_device_and_bucket_choices(model: TinyConvGRU) -> None:
    assert default_buckets(5) == (1, 2, 4, 8)
    assert LocalEngine(model, device="auto").device.type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            LocalEngine(model, device="cuda")
    with pytest.raises(ValueError, match="half"):
        LocalEngine(model, device="cpu", half=True)


async def test_closing_the_stream_a_tick_waits_for_closes_the_tick(model: TinyConvGRU) -> None:
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=5.0) as engine:
        engine.open_stream("a")
        engine.open_stream("idle")
        t0 = time.perf_counter()
        pending = asyncio.create_task(engine.process("a", audio(9, 1)))
        await asyncio.sleep(0.05)
        engine.close_stream("idle")
        await asyncio.wait_for(pending, 2.0)
        assert time.perf_counter() - t0 < 2.0


class SleepyModel(TinyConvGRU):
    """A model whose step takes 2 ms of wall time (a stand-in for a heavy model on a slow CPU)."""

    def step(self, hops, state):  # type: ignore[no-untyped-def]
        time.sleep(0.002)
        return super().step(hops, state)


def test_unbatched_capacity_is_what_fits_in_a_hop() -> None:
    from denoiser.engine.capacity import unbatched_capacity

    # 60 % of a 10 ms hop holds two 2 ms steps (plus the tiny model's own time): 2 (or 1 on a
    # machine so loaded that a step takes over 3 ms).
    assert unbatched_capacity(SleepyModel().eval(), reps=5) in (1, 2)
    assert unbatched_capacity(TinyConvGRU().eval(), reps=5, limit=40) <= 40
    assert unbatched_capacity(SleepyModel().eval(), share=0.001, reps=3) == 1  # never zero


async def feed_all(engine: LocalEngine, inputs: list[np.ndarray],
                   chunk_hops: int) -> list[np.ndarray]:
    for i in range(len(inputs)):
        engine.open_stream(f"s{i}")
    return list(await asyncio.gather(*(feed(engine, f"s{i}", x, chunk_hops)
                                       for i, x in enumerate(inputs))))


@pytest.mark.parametrize("pad", [False, True])
async def test_codec_frames_run_as_one_multi_hop_call(model: TinyConvGRU, pad: bool) -> None:
    """N streams sending 20 ms frames (2 hops): each tick is one `step_many` call of 2 hops
    over the batch, and the output is the same as with 1-hop requests and as each stream
    alone (the tiny model's `step_many` is its steps: exactly equal)."""
    n, hops = 5, 16
    inputs = [audio(30 + i, hops) for i in range(n)]
    results = {}
    for chunk in (1, 2):
        async with LocalEngine(model, device="cpu", max_streams=8, tick_deadline=0.05,
                               pad_to_bucket=pad) as engine:
            results[chunk] = await feed_all(engine, inputs, chunk)
            stats = engine.stats.snapshot()
        if chunk == 2:
            assert stats["hops_per_call"].get(2, 0) >= hops // 2 - 1
            assert stats["batch_sizes"].get(n, 0) >= hops - 2  # still counted per hop round
    for i in range(n):
        np.testing.assert_array_equal(results[2][i], results[1][i])
        np.testing.assert_allclose(results[2][i], offline(model, inputs[i]), atol=2e-6,
                                   rtol=1e-5)


async def test_rounds_over_different_streams_are_not_merged(model: TinyConvGRU) -> None:
    """a sends 3 hops, b 2: rounds [a b] [a b] [a]: one call of 2 hops, then one of 1;
    with multi_hop off, three calls of one hop. Same output either way."""
    a, b = audio(40, 3), audio(41, 2)
    outs, per_call = [], []
    for multi_hop in (True, False):
        async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.05,
                               multi_hop=multi_hop) as engine:
            engine.open_stream("a")
            engine.open_stream("b")
            outs.append(await asyncio.gather(engine.process("a", a), engine.process("b", b)))
            stats = engine.stats.snapshot()
        assert stats["ticks"] == 1 and stats["batch_sizes"] == {2: 2, 1: 1}
        per_call.append(stats["hops_per_call"])
    assert per_call == [{2: 1, 1: 1}, {1: 3}]
    for multi, single in zip(*outs, strict=True):
        np.testing.assert_array_equal(multi, single)
    np.testing.assert_allclose(outs[0][0], offline(model, a), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(outs[0][1], offline(model, b), atol=2e-6, rtol=1e-5)


async def test_dfn3_codec_frames_equal_single_hops_and_streams_alone() -> None:
    """The shipped DFN3 through the engine: three streams with 2-hop requests (one
    `step_many` call per tick) give what 1-hop requests give and what each stream gives
    stepped alone, within float32 rounding (its features of 2 frames come from one matmul)."""
    from denoiser.model.weights import load_default_model
    from support.sample_audio import noisy_example

    model = load_default_model("cpu")
    clip = noisy_example(1.0)
    hops = 24
    inputs = [clip[:hops * HOP], clip[hops * HOP:2 * hops * HOP] * 0.3,
              clip[-hops * HOP:][::-1].copy()]
    with torch.inference_mode():
        alone = []
        for x in inputs:
            state, outs = model.initial_state(1), []
            for hop in torch.from_numpy(x)[None].split(HOP, dim=1):
                out, state = model.step(hop, state)
                outs.append(out)
            alone.append(torch.cat(outs, dim=1)[0].numpy())
    results = {}
    for chunk in (1, 2):
        async with LocalEngine(model, device="cpu", max_streams=4, tick_deadline=0.05) as engine:
            results[chunk] = await feed_all(engine, inputs, chunk)
            calls = engine.stats.snapshot()["hops_per_call"]
        assert calls.get(chunk, 0) >= hops // chunk - 1
    for i in range(len(inputs)):
        np.testing.assert_allclose(results[1][i], alone[i], atol=1e-6, rtol=0)
        np.testing.assert_allclose(results[2][i], alone[i], atol=1e-6, rtol=0)
    assert np.abs(alone[0] - alone[1]).max() > 1e-4  # the streams differ: 100x the tolerance


async def test_streams_joining_mid_run_grow_the_table_under_held_state(
        model: TinyConvGRU) -> None:
    """Between calls over the same slots the engine holds the new state instead of scattering
    it; a table growth (and a changed slot list) must write it back first."""
    inputs = [audio(50 + i, 12) for i in range(5)]
    async with LocalEngine(model, device="cpu", max_streams=8, initial_slots=2,
                           tick_deadline=0.05) as engine:
        engine.open_stream("s0")
        engine.open_stream("s1")
        heads = await asyncio.gather(*(feed(engine, f"s{i}", inputs[i][:6 * HOP], 2)
                                       for i in range(2)))
        for i in range(2, 5):
            engine.open_stream(f"s{i}")
        assert engine.capacity == 8
        tails = await asyncio.gather(*(feed(engine, f"s{i}", inputs[i][6 * HOP:], 2)
                                       for i in range(2)),
                                     *(feed(engine, f"s{i}", inputs[i], 1) for i in range(2, 5)))
    for i in range(2):
        np.testing.assert_allclose(np.concatenate([heads[i], tails[i]]),
                                   offline(model, inputs[i]), atol=2e-6, rtol=1e-5)
    for i in range(2, 5):
        np.testing.assert_allclose(tails[i], offline(model, inputs[i]), atol=2e-6, rtol=1e-5)


class RaiseOnLoud(TinyConvGRU):
    """Raises for a batch holding a hop that peaks above 10 (a model failing mid-run)."""

    def step(self, hops, state):  # type: ignore[no-untyped-def]
        if hops.abs().amax() > 10:
            raise RuntimeError("boom")
        return super().step(hops, state)


async def test_a_failed_forward_fails_its_tick_and_resets_its_streams() -> None:
    """Every stream of a failed tick gets the error and starts again from a fresh state (its
    state, held or in the table, is unknown after the failure); later ticks run normally."""
    model = RaiseOnLoud().eval()
    x, y = audio(60, 6), audio(61, 6)
    loud = np.full(2 * HOP, 20.0, dtype=np.float32)
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.05) as engine:
        engine.open_stream("a")
        engine.open_stream("b")
        await asyncio.gather(feed(engine, "a", x, 2), feed(engine, "b", y, 2))
        failed = await asyncio.gather(engine.process("a", loud), engine.process("b", x[:2 * HOP]),
                                      return_exceptions=True)
        assert all(isinstance(f, EngineError) and "forward failed" in str(f) for f in failed)
        after = await asyncio.gather(feed(engine, "a", y, 2), feed(engine, "b", x, 2))
        assert engine.stats.errors["forward"] == 1
    np.testing.assert_allclose(after[0], offline(model, y), atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(after[1], offline(model, x), atol=2e-6, rtol=1e-5)


async def test_a_reopened_slot_starts_fresh_in_the_same_batch(model: TinyConvGRU) -> None:
    """a and b run together; b closes and c opens in b's slot: the next ticks run the very
    same slot list, yet c must start from a fresh state, not from b's held one."""
    x, y = audio(70, 8), audio(71, 8)
    async with LocalEngine(model, device="cpu", max_streams=2, tick_deadline=0.05) as engine:
        engine.open_stream("a")
        engine.open_stream("b")
        first_a, _ = await asyncio.gather(feed(engine, "a", x[:4 * HOP], 2),
                                          feed(engine, "b", y[:4 * HOP], 2))
        slot_b = engine._streams["b"].slot
        engine.close_stream("b")
        engine.open_stream("c")
        assert engine._streams["c"].slot == slot_b
        rest_a, out_c = await asyncio.gather(feed(engine, "a", x[4 * HOP:], 2),
                                             feed(engine, "c", y, 2))
    np.testing.assert_allclose(np.concatenate([first_a, rest_a]), offline(model, x), atol=2e-6)
    np.testing.assert_allclose(out_c, offline(model, y), atol=2e-6)
