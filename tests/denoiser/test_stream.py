"""DenoisedStream over a real LocalEngine: alignment, modes, crossfades, late and failed hops."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from denoiser.engine.local import LocalEngine
from denoiser.stream import DenoisedStream, crossfade_curves
from support.models import HOP, GainModel, TinyConvGRU

torch.set_num_threads(1)


def sine(hops: int, freq: float = 200.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(hops * HOP) / 48_000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


async def run(stream: DenoisedStream, x: np.ndarray,
              on_hop=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    outs = []
    for k in range(x.size // HOP):
        if on_hop is not None:
            on_hop(k)
        outs.append(await stream.process_hop(x[k * HOP:(k + 1) * HOP]))
    return np.concatenate(outs)


def delayed(x: np.ndarray, latency: int) -> np.ndarray:
    return np.concatenate([np.zeros(latency, np.float32), x[: x.size - latency]])


@pytest.mark.parametrize("delay", [0, 240, 480])
@pytest.mark.parametrize("mode", ["on", "off"])
async def test_impulse_latency_equals_declared_latency(delay: int, mode: str) -> None:
    model = TinyConvGRU(delay=delay).eval()
    x = np.zeros(12 * HOP, np.float32)
    at = 5 * HOP + 123
    x[at] = 0.9
    async with LocalEngine(model, device="cpu", max_streams=1) as engine:
        stream = DenoisedStream(engine, "s", mode=mode, deadline=None)
        y = await run(stream, x)
    assert engine.latency_samples == delay
    assert int(np.argmax(np.abs(y))) == at + delay
    assert abs(y[at + delay]) > 0.1
    key = "denoised" if mode == "on" else "mode_off"
    assert stream.counters[key] == 12 and stream.passed_through == (12 if mode == "off" else 0)


async def test_mode_switches_crossfade_without_clicks() -> None:
    # The "denoiser" inverts the signal, so a hard switch would jump by up to 2 x amplitude.
    latency, fade = 240, 384
    x = sine(30, freq=170)
    raw = delayed(x, latency)
    den = -raw
    switches = {8: "off", 16: "on", 24: "off"}
    async with LocalEngine(GainModel(delay=latency, gain=-1.0), device="cpu") as engine:
        stream = DenoisedStream(engine, "s", mode="on", deadline=None, crossfade_ms=8)
        y = await run(stream, x, lambda k: setattr(stream, "mode", switches.get(k, stream.mode)))
    assert stream.switches == 3
    assert stream.counters == {**stream.counters, "denoised": 16, "mode_off": 14}
    max_step_signal = np.abs(np.diff(raw)).max()
    assert np.abs(np.diff(y)).max() < 4 * max_step_signal  # no click anywhere
    assert np.abs(raw[8 * HOP] - den[8 * HOP]) > 0.3  # a hard cut there would have clicked
    out_curve, in_curve = crossfade_curves(fade, "linear")
    for k, (a, b) in {8: (den, raw), 16: (raw, den), 24: (den, raw)}.items():
        s = k * HOP
        np.testing.assert_allclose(y[s - HOP:s], a[s - HOP:s], atol=1e-6)
        np.testing.assert_allclose(y[s:s + fade], a[s:s + fade] * out_curve
                                   + b[s:s + fade] * in_curve, atol=1e-6)
        np.testing.assert_allclose(y[s + fade:s + HOP], b[s + fade:s + HOP], atol=1e-6)


def test_equal_power_curves_keep_power() -> None:
    out_c, in_c = crossfade_curves(400, "equal_power")
    np.testing.assert_allclose(out_c**2 + in_c**2, 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        crossfade_curves(10, "cubic")


class SleepyGain(GainModel):
    """A GainModel whose step can be made slow, to miss deadlines on demand."""

    sleep_s = 0.0

    def step(self, hops, state):  # type: ignore[no-untyped-def]
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().step(hops, state)


async def test_late_hops_pass_through_counted_and_state_stays_in_order() -> None:
    """Four hops come back after the deadline: they go out raw, counted late, yet still run in
    order (each finishes before the next hop arrives), so nothing is skipped and the output is
    exactly the model's again from the next hop."""
    model = SleepyGain(delay=240, gain=0.5)
    x = sine(40, freq=300)
    raw = delayed(x, 240)
    outs = []
    async with LocalEngine(model, device="cpu", max_streams=1) as engine:
        stream = DenoisedStream(engine, "s", mode="on", deadline=0.03)
        for k in range(40):
            model.sleep_s = 0.06 if 10 <= k < 14 else 0.0
            outs.append(await stream.process_hop(x[k * HOP:(k + 1) * HOP]))
            if model.sleep_s:
                await asyncio.sleep(0.1)  # the late step finishes before the next hop
        hops_run = engine.stats.hops
    y = np.concatenate(outs)
    assert stream.counters["late"] == 4 and stream.counters["denoised"] == 36
    assert stream.hops_not_sent == 0 and hops_run == 40
    s = 10 * HOP
    np.testing.assert_allclose(y[s + 400: s + HOP], raw[s + 400: s + HOP], atol=1e-6)
    assert np.abs(np.diff(y)).max() < 4 * np.abs(np.diff(raw)).max()
    np.testing.assert_allclose(y[14 * HOP + 400:], 0.5 * raw[14 * HOP + 400:], atol=1e-6)


async def test_a_stalled_engine_gets_no_backlog_and_the_stream_rejoins_cleanly() -> None:
    """The engine stalls for 300 ms on one hop while hops keep coming in real time. They are not
    queued behind the stall (they could only come back late): they go out raw, counted late and
    `hops_not_sent`. When the stall ends the stream is denoised again at once, except for the
    hops whose output spans the gap in the model's input, and the output never clicks."""
    latency = 240
    model = SleepyGain(delay=latency, gain=0.5)
    x = sine(80, freq=300)
    raw = delayed(x, latency)
    paths = []
    async with LocalEngine(model, device="cpu", max_streams=1) as engine:
        stream = DenoisedStream(engine, "s", mode="on", deadline=0.03)
        outs = []
        for k in range(80):
            model.sleep_s = 0.3 if k == 10 else 0.0
            before = stream.counters["denoised"]
            outs.append(await stream.process_hop(x[k * HOP:(k + 1) * HOP]))
            paths.append("denoised" if stream.counters["denoised"] > before else "raw")
            await asyncio.sleep(0.01)  # hops arrive in real time
        hops_run = engine.stats.hops
    y = np.concatenate(outs)
    not_sent = stream.hops_not_sent
    assert not_sent >= 10  # most of the stall's hops never reached the engine
    assert hops_run + not_sent == 80
    assert stream.counters["late"] == 1 + not_sent + stream._rejoin_hops
    assert stream.counters["denoised"] == 80 - stream.counters["late"]
    # Raw from the stalled hop through the rejoin, denoised before and after.
    back = 11 + not_sent + stream._rejoin_hops
    assert paths == ["denoised"] * 10 + ["raw"] * (back - 10) + ["denoised"] * (80 - back)
    assert np.abs(np.diff(y)).max() < 4 * np.abs(np.diff(raw)).max()
    np.testing.assert_allclose(y[(back + 1) * HOP:], 0.5 * raw[(back + 1) * HOP:], atol=1e-6)


async def test_engine_failure_passes_through_and_full_engine_is_survivable() -> None:
    x = sine(10)
    raw = delayed(x, 240)
    engine = LocalEngine(TinyConvGRU(delay=240).eval(), device="cpu", max_streams=1)
    await engine.start()
    first = DenoisedStream(engine, "a", mode="on", deadline=None)
    second = DenoisedStream(engine, "b", mode="on", deadline=None)  # no slot left
    y_b = await run(second, x)
    np.testing.assert_array_equal(y_b, raw)
    assert second.counters["engine_full"] == 10 and second.counters["engine_error"] == 0
    await run(first, x[: 4 * HOP])
    await engine.close()  # the engine goes away mid-stream
    y_a = await run(first, x[4 * HOP:])
    assert first.counters["engine_error"] == 6 and first.counters["denoised"] == 4
    s = 4 * HOP
    np.testing.assert_allclose(y_a[400:], raw[s + 400:], atol=1e-6)


async def test_a_refused_stream_gets_a_slot_when_one_frees() -> None:
    async with LocalEngine(GainModel(gain=0.5), device="cpu", max_streams=1) as engine:
        first = DenoisedStream(engine, "a", mode="on", deadline=None)
        second = DenoisedStream(engine, "b", mode="on", deadline=None, reopen_every_hops=5)
        await run(second, sine(3))
        first.close()  # a participant leaves: the waiting stream takes the slot on its next try
        await run(second, sine(10))
    # refused for hops 1-4, asks again on the 5th and is denoised from then on
    assert second.counters["engine_full"] == 4 and second.counters["denoised"] == 9


async def test_a_stream_the_engine_lost_opens_again() -> None:
    """An engine that no longer knows the stream (a worker that restarted) answers
    `UnknownStream`: the stream counts `engine_error`, opens again and is denoised."""
    async with LocalEngine(GainModel(gain=0.5), device="cpu", max_streams=2) as engine:
        stream = DenoisedStream(engine, "a", mode="on", deadline=None, reopen_every_hops=2)
        await run(stream, sine(3))
        engine.close_stream("a")  # as a restarted worker would: the slot is gone
        await run(stream, sine(6))
    # the refused hop, then one hop waiting to ask again; without the reopen every hop fails
    assert stream.counters["engine_error"] == 2
    assert stream.counters["denoised"] == 3 + 4


class LoudnessDetector:
    """A minimal real detector: asks to keep the original for loud hops ("tone")."""

    def update(self, hop: np.ndarray) -> str | None:
        return "tone" if float(np.sqrt(np.mean(hop**2))) > 0.2 else None


# Loud input hops are 10..19. An output hop carries input `delay` samples older (the hop and the
# one before it for 240); it keeps the original if any verdict from its input time up to now does.
@pytest.mark.parametrize(("delay", "raw_hops"), [(0, range(10, 20)), (240, range(10, 21)),
                                                 (480, range(10, 21))])
async def test_detector_decisions_cover_the_signal_with_look_ahead(delay: int,
                                                                   raw_hops: range) -> None:
    x = sine(30, amp=0.01)
    x[10 * HOP:20 * HOP] *= 50  # loud between input hops 10 and 19
    async with LocalEngine(GainModel(delay=delay, gain=0.0), device="cpu") as engine:
        stream = DenoisedStream(engine, "s", mode="auto", detector=LoudnessDetector(),
                                deadline=None)
        y = await run(stream, x)
        stream.mode = "on"  # "on" overrides the detector
        y_on = await run(stream, x)
    assert stream.counters["tone"] == len(raw_hops)
    passed = [k for k in range(30) if np.abs(y[k * HOP + 400:(k + 1) * HOP]).max() > 0]
    assert passed == list(raw_hops)
    assert np.abs(y_on[400:]).max() == 0.0


async def test_bad_hops_and_modes_get_clear_errors() -> None:
    async with LocalEngine(GainModel(), device="cpu") as engine:
        stream = DenoisedStream(engine, "s", deadline=None)
        with pytest.raises(ValueError, match="mode"):
            stream.mode = "loud"
        with pytest.raises(ValueError, match="one mono hop"):
            await stream.process_hop(np.zeros(100, np.float32))
        bad = np.full(HOP, np.nan, np.float32)
        assert np.isfinite(await stream.process_hop(bad)).all()  # NaN input becomes silence
        stream.close()
        assert engine.live_streams == 0


class BrokenDetector:
    def update(self, hop: np.ndarray) -> str | None:
        raise ValueError("shapes do not match")


async def test_a_failing_detector_does_not_stop_the_audio() -> None:
    x = sine(6)
    async with LocalEngine(GainModel(delay=240, gain=0.5), device="cpu") as engine:
        stream = DenoisedStream(engine, "s", detector=BrokenDetector(), deadline=None)
        y = await run(stream, x)
    assert stream.detector_errors == 6 and stream.counters["denoised"] == 6
    np.testing.assert_allclose(y, 0.5 * delayed(x, 240), atol=1e-6)


async def test_a_cancelled_caller_leaves_its_hop_to_finish_in_the_background() -> None:
    async with LocalEngine(GainModel(), device="cpu", tick_deadline=0.05) as engine:
        stream = DenoisedStream(engine, "s", mode="on", deadline=None)
        engine.open_stream("other")  # a second live stream keeps the tick open until its deadline
        caller = asyncio.ensure_future(stream.process_hop(sine(1)))
        await asyncio.sleep(0.01)  # the hop is queued in the engine, waiting for its tick
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert len(stream._background) == 1  # kept, so its result (or error) is retrieved
        await asyncio.sleep(0.1)
        assert not stream._background and engine.stats.hops == 1


@pytest.mark.parametrize("mode", ["on", "auto", "off"])
async def test_hops_sent_together_equal_hops_sent_one_by_one(mode: str) -> None:
    x = sine(30, amp=0.01)
    x[10 * HOP:20 * HOP] *= 50  # the loudness detector keeps input hops 10..19
    async with LocalEngine(TinyConvGRU().eval(), device="cpu") as engine:
        one = DenoisedStream(engine, "one", mode=mode, detector=LoudnessDetector(), deadline=None)
        two = DenoisedStream(engine, "two", mode=mode, detector=LoudnessDetector(), deadline=None)
        y_one = await run(one, x)
        y_two = np.concatenate([await two.process_hops(x[i:i + 2 * HOP])
                                for i in range(0, x.size, 2 * HOP)])
    np.testing.assert_allclose(y_two, y_one, atol=1e-6)
    assert one.counters == two.counters and one.switches == two.switches
    with pytest.raises(ValueError, match="whole mono hops"):
        await two.process_hops(np.zeros(HOP + 1, np.float32))


class RecordingDetector:
    """Records which thread ran it and the hops it saw; slow, so that a caller can go away
    while it runs."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.seen: list[int] = []

    def update(self, hop: np.ndarray) -> str | None:
        self.threads.add(threading.get_ident())
        time.sleep(0.02)
        self.seen.append(round(float(hop[0]) * 100))
        return None


async def test_the_detector_runs_off_the_event_loop_and_in_order() -> None:
    detector = RecordingDetector()
    async with LocalEngine(GainModel(), device="cpu") as engine:
        stream = DenoisedStream(engine, "s", mode="auto", detector=detector, deadline=None)
        hops = [np.full(HOP, k / 100, np.float32) for k in range(6)]
        await stream.process_hops(np.concatenate(hops[:2]))
        # a caller that goes away while the detector works on its hop: the next call still
        # reaches the detector after it, never alongside or before
        caller = asyncio.ensure_future(stream.process_hop(hops[2]))
        await asyncio.sleep(0.005)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await stream.process_hops(np.concatenate(hops[3:]))
    assert threading.get_ident() not in detector.threads
    assert detector.seen == [0, 1, 2, 3, 4, 5]


class FirstHopsDetector:
    """Keeps the original for the first `n` hops ("music"), then never."""

    def __init__(self, n: int) -> None:
        self.n = n

    def update(self, hop: np.ndarray) -> str | None:
        self.n -= 1
        return "music" if self.n >= 0 else None


async def test_without_a_deadline_a_long_bypass_does_not_run_ahead_of_the_engine() -> None:
    # Ticks held open 50 ms by a second stream, and room for only 4 waiting hops: a bypassed
    # stretch that sent its warm requests without waiting for them would pile up past the
    # limit, and the hops after it, which need the engine, would be refused ("engine_error").
    x = sine(14)
    async with LocalEngine(GainModel(gain=0.5), device="cpu", tick_deadline=0.05,
                           max_pending_hops=4) as engine:
        engine.open_stream("other")
        stream = DenoisedStream(engine, "s", mode="auto", detector=FirstHopsDetector(10),
                                deadline=None)
        await run(stream, x)
    # (the output hop after the bypass still carries bypassed input: GainModel's delay)
    assert stream.counters["engine_error"] == 0
    assert stream.counters["music"] + stream.counters["denoised"] == 14
    assert stream.counters["denoised"] >= 3


async def test_mode_off_without_warming_runs_neither_model_nor_detector() -> None:
    """`warm_when_off=False` (the SFU's choice): mode off costs the delay line alone; when the
    mode comes back the model rejoins after its latency (those hops raw, counted late)."""
    latency = 240
    x = sine(20, freq=170)
    calls = []

    class Counting:
        def update(self, hop: np.ndarray) -> None:
            calls.append(hop)

    async with LocalEngine(GainModel(delay=latency, gain=-1.0), device="cpu") as engine:
        stream = DenoisedStream(engine, "s", mode="off", deadline=None, detector=Counting(),
                                warm_when_off=False)
        switches = {10: "on"}
        y = await run(stream, x, lambda k: setattr(stream, "mode", switches.get(k, stream.mode)))
        assert engine.stats.hops == 10 and len(calls) == 10  # only the hops after "on"
    np.testing.assert_array_equal(y[:10 * HOP], delayed(x, latency)[:10 * HOP])
    assert stream.counters["mode_off"] == 10 and stream.counters["late"] >= 1
    assert stream.counters["denoised"] == 10 - stream.counters["late"]
