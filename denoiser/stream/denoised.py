"""One live stream through an engine: denoised when it can be, the original when it must.

`DenoisedStream.process_hop(raw)` always returns one hop, delayed by the engine's
`latency_samples` whichever path it took: the model's output, or the raw input from a delay line
of the same length. A hop takes the raw path when the mode is `off`, when the bypass detector
(mode `auto`) asks to keep the original (DTMF, tones, music), when the engine answers after
`deadline` ("late"), when the engine has no slot for it ("engine_full": it asks again every
second), or when the engine fails ("engine_error"). Every change of path is smoothed
by a short crossfade at the start of the hop, so switching never clicks; every hop is counted.

A late answer is still computed (it carries the stream's state forward), but while it is, the
stream sends the engine nothing more: those hops go out raw, counted `late` (unless a bypass
keeps them raw anyway), and the model never sees them (`hops_not_sent`). An engine that falls
behind, on a machine short of CPU, thus never builds a queue of audio that could only come
back late: it answers in time again from the first request after it catches up, instead of
staying late for as long as a backlog takes to drain. The model's input jumps over the hops it
missed, and its output carries that join for `latency_samples` and a hop more, so those first
hops after the gap stay raw too (`late`) and the path switches back to the model after the
join has passed.

The detector sees each raw hop as it arrives. An output hop carries input from `latency_samples`
earlier, so by the time it goes out the detector has seen that much more: the hop keeps the
original if any verdict given from its own input time up to now says so. A bypass thus starts up
to `latency_samples` before the detector could decide and ends no earlier than the signal does.

The detector runs in a worker thread (`detector_executor`), not on the event loop that carries
every stream's network I/O, and while it runs the engine already has the hops: the engine
request is sent first (it needs only the raw audio), so the detector's time overlaps the
engine's instead of adding to it. One stream's hops still reach its detector strictly in order
(a call waits for the previous one's detector work, even when that caller was cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from denoiser.engine import Engine, EngineError, EngineFull, UnknownStream
from denoiser.stream.crossfade import crossfade_curves
from denoiser.stream.detection import Detector, detector_executor
from denoiser.stream.modes import MODES, PASS_REASONS

log = logging.getLogger(__name__)

class DenoisedStream:
    """Per-stream wrapper around an `Engine` (see the module docstring)."""

    def __init__(self, engine: Engine, stream_id: str, mode: str = "auto",
                 detector: Detector | None = None, *, deadline: float | None = 0.02,
                 crossfade_ms: float = 8.0, crossfade: str = "linear",
                 keep_warm: bool = True, reopen_every_hops: int = 100,
                 warm_when_off: bool = True) -> None:
        self.engine = engine
        self.stream_id = stream_id
        self.detector = detector
        self.deadline = deadline
        self.keep_warm = keep_warm
        # False (the SFU's choice): in mode off neither the model nor the detector runs; the
        # first hops after the mode comes back stay raw (counted late) while the model rejoins.
        self.warm_when_off = warm_when_off
        self.hop_size = int(engine.hop_size)
        self.latency_samples = int(engine.latency_samples)
        fade_len = round(crossfade_ms * engine.sample_rate / 1000)
        if not 1 <= fade_len <= self.hop_size:
            raise ValueError(f"crossfade must be between 1 sample and one hop, got {fade_len}")
        self._fade_out, self._fade_in = crossfade_curves(fade_len, crossfade)
        self._offset_fade = np.linspace(1.0, 0.0, fade_len, endpoint=False, dtype=np.float32)
        self._mode = "auto"
        self.mode = mode
        self.counters: dict[str, int] = {"denoised": 0, **dict.fromkeys(PASS_REASONS, 0)}
        self.switches = 0
        self.detector_errors = 0
        self._raw_tail = np.zeros(self.latency_samples, dtype=np.float32)
        lags = -(-self.latency_samples // self.hop_size)
        self._lags = sorted({self.latency_samples // self.hop_size, lags})
        self._decisions: deque[str | None] = deque([None] * (lags + 1), maxlen=lags + 1)
        self._path: str | None = None
        self._last_out = np.float32(0.0)
        self._background: set[asyncio.Task[np.ndarray]] = set()
        self._behind: asyncio.Task[np.ndarray] | None = None  # last request left running
        self.hops_not_sent = 0  # hops the engine never saw because it was behind
        self._rejoin_hops = lags + 1  # model output hops that span a gap in its input
        self._rejoin_left = 0  # of those, still to come after the last gap
        self._detector_busy = False  # a job of this stream in the detector thread
        self._detector_idle: asyncio.Future[None] | None = None  # for a call waiting on it
        self._reopen_every = max(1, reopen_every_hops)
        self._hops_since_open_try = 0
        self._open = False
        self._refused: str | None = None  # why the engine last refused to open this stream
        self._closed = False
        self._try_open()

    # -- configuration ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._mode = value

    @property
    def passed_through(self) -> int:
        return sum(self.counters[r] for r in PASS_REASONS)

    # -- engine session --------------------------------------------------------------------

    def _try_open(self) -> None:
        self._hops_since_open_try = 0
        try:
            self.engine.open_stream(self.stream_id)
        except EngineError as exc:
            if not self._refused:
                log.warning("stream %s: engine refused it (%s); passing audio through",
                            self.stream_id, exc)
            self._refused = "engine_full" if isinstance(exc, EngineFull) else "engine_error"
            self._open = False
        else:
            self._refused = None
            self._open = True

    def close(self) -> None:
        """Release the engine slot; hops still in flight are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._open:
            self.engine.close_stream(self.stream_id)
            self._open = False

    def _keep_in_background(self, task: asyncio.Task[np.ndarray]) -> None:
        self._background.add(task)
        self._behind = task
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[np.ndarray]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late or unwanted result has nowhere to go

    def _request(self, raw: np.ndarray) -> tuple[asyncio.Task[np.ndarray] | None, str | None]:
        """Send the hops to the engine; returns (the request, or None with why not)."""
        if self._closed:
            return None, "engine_error"
        if not self._open:
            self._hops_since_open_try += 1
            if self._hops_since_open_try >= self._reopen_every:
                self._try_open()
            if not self._open:
                return None, self._refused or "engine_error"
        if self._behind is not None:
            if not self._behind.done():
                self.hops_not_sent += raw.size // self.hop_size
                self._rejoin_left = self._rejoin_hops  # counted down by the hops sent after
                return None, "late"
            self._behind = None
        return asyncio.ensure_future(self.engine.process(self.stream_id, raw)), None

    async def _collect(self, task: asyncio.Task[np.ndarray], wait: bool, sent: float
                       ) -> tuple[np.ndarray | None, str | None]:
        """The engine's answer to a request sent at `sent` (monotonic clock), or why not."""
        if not wait:
            self._keep_in_background(task)
            return None, None
        timeout = None
        if self.deadline is not None:
            timeout = max(0.0, self.deadline - (time.monotonic() - sent))
        try:
            await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            self._keep_in_background(task)  # the caller went away; the hop still lands
            raise
        if not task.done():
            self._keep_in_background(task)  # the engine still advances this stream's state
            return None, "late"
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, UnknownStream):
                self._open = False  # e.g. a worker that restarted: open again soon
            log.debug("stream %s: engine error %s", self.stream_id, exc)
            # A worker shared with other nodes can be full although this node saw a free slot.
            return None, "engine_full" if isinstance(exc, EngineFull) else "engine_error"
        return task.result(), None

    # -- the audio path --------------------------------------------------------------------

    def _delay_raw(self, raw: np.ndarray) -> np.ndarray:
        if not self.latency_samples:
            return raw
        joined = np.concatenate([self._raw_tail, raw])
        self._raw_tail = joined[self.hop_size:]
        return joined[:self.hop_size]

    def _detect(self, hops: Sequence[np.ndarray]) -> list[str | None]:
        """Run the detector over consecutive hops (in a worker thread); returns each hop's
        verdict for the input time its output carries."""
        assert self.detector is not None
        out = []
        for raw in hops:
            decision = None
            try:
                decision = self.detector.update(raw)
            except Exception:  # a broken detector must not stop the audio: denoise instead
                self.detector_errors += 1
                if self.detector_errors == 1:
                    log.exception("stream %s: bypass detector failed; denoising",
                                  self.stream_id)
            self._decisions.append(decision)
            out.append(self._aligned())
        return out

    def _aligned(self) -> str | None:
        """The verdict for the input time carried by the output hop of the latest input hop.

        The output hop carries input hops up to `max(self._lags)` hops old; every verdict given
        since then (with the look-ahead of the hops that came after) may keep the original, so a
        tone or music is kept from its very first sample and up to its last.
        """
        for lag in range(max(self._lags), -1, -1):
            reason = self._decisions[-1 - lag]
            if reason is not None:
                return reason
        return None

    async def _detect_off_loop(self, hops: Sequence[np.ndarray]) -> list[str | None]:
        """`_detect` in the detector thread, this stream's calls strictly in order: a caller
        that went away leaves its job running, and the next call waits for it."""
        if self.detector is None:
            return [None] * len(hops)
        loop = asyncio.get_running_loop()
        while self._detector_busy:  # only after a cancelled caller
            if self._detector_idle is None:
                self._detector_idle = loop.create_future()
            await asyncio.shield(self._detector_idle)
        self._detector_busy = True
        job: asyncio.Future[list[str | None]] = loop.create_future()
        detector_executor().submit(self._detect_job, loop, job, hops)
        return await job

    def _detect_job(self, loop: asyncio.AbstractEventLoop, job: asyncio.Future[list[str | None]],
                    hops: Sequence[np.ndarray]) -> None:
        """In the detector thread: `_detect`, its result handed to the loop."""
        try:
            result, exc = self._detect(hops), None
        except BaseException as err:  # handed to the awaiting caller
            result, exc = [], err
        loop.call_soon_threadsafe(self._detect_done, job, result, exc)

    def _detect_done(self, job: asyncio.Future[list[str | None]], result: list[str | None],
                     exc: BaseException | None) -> None:
        """On the loop: the detector thread is done with this stream's job."""
        self._detector_busy = False
        idle, self._detector_idle = self._detector_idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)
        if job.done():  # its caller went away
            return
        if exc is not None:
            job.set_exception(exc)
        else:
            job.set_result(result)

    async def process_hop(self, raw: np.ndarray) -> np.ndarray:
        """One hop in (float32[hop_size]), one hop out (delayed by `latency_samples`)."""
        raw = np.asarray(raw, dtype=np.float32)
        if raw.shape != (self.hop_size,):
            raise ValueError(f"expected one mono hop of {self.hop_size} samples, "
                             f"got shape {raw.shape}")
        return await self.process_hops(raw)

    async def process_hops(self, raw: np.ndarray) -> np.ndarray:
        """Consecutive hops in (float32[n * hop_size]), as many out, in ONE engine request.

        A 20 ms codec frame carries two hops: sending both at once lets the engine run them in
        back-to-back ticks instead of one round trip per hop. Same output and counters as `n`
        calls of `process_hop` whenever the engine answers in time; the deadline applies to
        the request as a whole.
        """
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 1 or not raw.size or raw.size % self.hop_size:
            raise ValueError(f"expected whole mono hops of {self.hop_size} samples, "
                             f"got shape {raw.shape}")
        if not np.isfinite(raw).all():
            raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        hops = list(raw.reshape(-1, self.hop_size))
        delayed = [self._delay_raw(hop) for hop in hops]
        if self._mode == "off" and not self.warm_when_off and self._path != "denoised":
            # Off and already on the raw path: neither the model nor the detector can change
            # what goes out, so neither runs (a call in mode off costs the media path alone).
            # The model's input now has a gap: when the mode comes back, its first hops span
            # it and stay raw, as after a late answer.
            self.counters["mode_off"] += len(hops)
            self.hops_not_sent += len(hops)
            self._rejoin_left = self._rejoin_hops
            self._path = "raw"
            self._last_out = delayed[-1][-1]
            return delayed[0] if len(delayed) == 1 else np.concatenate(delayed)
        # The engine gets the hops first (when it is kept warm it gets them whatever the
        # detector says), so the detector's time in its thread overlaps the engine's.
        sent = time.monotonic()
        task, missing = self._request(raw) if self.keep_warm else (None, None)
        try:
            decisions = await self._detect_off_loop(hops)
        except asyncio.CancelledError:
            if task is not None:
                self._keep_in_background(task)
            raise
        reasons = [self._route(d) for d in decisions]
        need_output = None in reasons or self._path == "denoised"
        if task is None and missing is None and need_output:
            sent = time.monotonic()
            task, missing = self._request(raw)
        denoised = None
        if task is not None:
            # Without a deadline (offline: `denoise`, the evaluations) a warm request is awaited
            # even when no hop needs it: a long bypass must not run ahead of the engine, whose
            # backlog limit would then refuse the hops that do need it.
            wait = need_output or self.deadline is None
            denoised, missing = await self._collect(task, wait, sent)
        outs = []
        for i, (reason, delayed_raw) in enumerate(zip(reasons, delayed, strict=True)):
            hop_out = None if denoised is None else denoised[i * self.hop_size:
                                                             (i + 1) * self.hop_size]
            if reason is None and hop_out is None:
                reason = missing or "engine_error"
            if task is not None and self._rejoin_left:
                self._rejoin_left -= 1  # the model ran this hop, but its output spans the gap
                reason = reason or "late"
            path = "denoised" if reason is None else "raw"
            self.counters["denoised" if reason is None else reason] += 1
            out = self._switch(path, hop_out, delayed_raw)
            self._last_out = out[-1]
            outs.append(out)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _route(self, decision: str | None) -> str | None:
        """Why this hop's output must be the original (None: denoise it); mode overrides."""
        if self._mode == "off":
            return "mode_off"
        if self._mode == "on":
            return None
        return decision

    def _switch(self, path: str, denoised: np.ndarray | None, raw: np.ndarray) -> np.ndarray:
        new = denoised if path == "denoised" else raw
        assert new is not None
        previous, self._path = self._path, path
        if previous is None or previous == path:
            return new
        self.switches += 1
        old = raw if previous == "raw" else denoised
        n = self._fade_in.size
        out = new.copy()
        if old is not None:
            out[:n] = old[:n] * self._fade_out + new[:n] * self._fade_in
        else:
            # The denoised hop never came: glide from the last sample sent onto the raw path.
            out[:n] += (self._last_out - new[0]) * self._offset_fade
        return out
