"""A model's `step_many` traced with TorchScript, one graph per hop count, for the CPU engine.

Why: the eager DFN3 step is several hundred small tensor operations, and each one lets go of
the GIL and takes it back. When another thread holds the GIL (the event loop of a busy SFU,
which carries every stream's network I/O), each take-back waits up to the interpreter's switch
interval, 5 ms. Measured on this project's CPU with one Python thread spinning beside it: a
2-hop step at batch 1 took 2,040 ms eager and 81 ms traced (3.5 ms and 2.1 ms when nothing
else runs). A traced graph runs its operations in C++ and re-takes the GIL a handful of times
per call, not once per operation; it also skips the Python overhead, which is most of the cost
at small batches.

A graph is traced from an example batch of two fresh streams (not the live batch, so nothing
depends on which streams came first), for each hop count T. The engine traces `WARM_HOP_COUNTS`
at start and then `seal`s the steps: a call of another T (3, 5 or 6 hops: a stream that sent
more than one frame in a tick, a 60 ms codec frame) then runs as consecutive calls of traced
counts (3 = 2 + 1, 6 = 2 + 2 + 2), which is the same computation (the state runs through), instead
of tracing a graph on a live tick (about a second on CPU, every stream of the tick waiting).
Any graph traced after `seal` all the same is logged (and the engine counts every graph traced
after its start). The
tracer records tensor sizes as operations, so one graph serves every batch size; Python
branches on T (the GRUs step frame by frame for a few frames) are why each T has its own. Each
new graph is checked against the eager step on a batch of three streams over a few calls; a
model that cannot be traced, or whose graph disagrees, keeps its eager `step_many` for that T
(logged, and listed in `fallbacks`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from denoiser.model.streaming import State, StreamingModel

log = logging.getLogger(__name__)

StepMany = Callable[[Tensor, State], tuple[Tensor, State]]
CHECK_CALLS = 3
CHECK_TOLERANCE = 1e-4  # of the output's peak; traced and eager run the same kernels
WARM_HOP_COUNTS = (1, 2)  # traced at start (as before); every other T is made of these


class _StepMany(nn.Module):
    """`model.step_many` as a module's forward, which is what the tracer takes."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        return self.model.step_many(hops, state)


class TracedSteps:
    """`steps(hops [B, T*hop], state)` -> `model.step_many(hops, state)`, traced per T.

    Call it in inference mode (the engine's worker thread does), on the model's device and
    dtype; the model must be in eval mode and must not change afterwards.
    """

    def __init__(self, model: StreamingModel, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self._graphs: dict[int, StepMany] = {}
        self.fallbacks: dict[int, str] = {}  # hop count -> why it runs eager
        self.compiles = 0  # graphs traced (or tried)
        self.sealed = False

    def __call__(self, hops: Tensor, state: State) -> tuple[Tensor, State]:
        hop_count = hops.shape[1] // self.model.hop_size
        step = self._graphs.get(hop_count)
        if step is not None:
            return step(hops, state)
        if self.sealed and 1 in self._graphs:
            return self._chain(hops, state, hop_count)
        step = self._graphs[hop_count] = self._trace(hop_count)
        return step(hops, state)

    def _chain(self, hops: Tensor, state: State, hop_count: int) -> tuple[Tensor, State]:
        """T hops as consecutive calls of the prepared counts, largest first."""
        hop = self.model.hop_size
        counts = sorted(self._graphs, reverse=True)
        outs, start = [], 0
        while start < hop_count:
            t = next(c for c in counts if c <= hop_count - start)  # 1 is always there
            out, state = self._graphs[t](hops[:, start * hop:(start + t) * hop].contiguous(),
                                         state)
            outs.append(out)
            start += t
        return torch.cat(outs, dim=1), state

    def prepare(self, *hop_counts: int) -> None:
        """Trace these hop counts now (at start-up, rather than on the first live tick)."""
        for hop_count in hop_counts:
            if hop_count not in self._graphs:
                self._graphs[hop_count] = self._trace(hop_count)

    def seal(self) -> None:
        """Start-up is over: from now on, a hop count not prepared is made of prepared ones."""
        self.sealed = True

    @property
    def traced(self) -> list[int]:
        return sorted(t for t in self._graphs if t not in self.fallbacks)

    def _example(self, batch: int, hop_count: int, seed: int) -> tuple[Tensor, State]:
        generator = torch.Generator().manual_seed(seed)
        hops = 0.1 * torch.randn(batch, hop_count * self.model.hop_size, generator=generator)
        return (hops.to(self.device, self.dtype),
                self.model.initial_state(batch, self.device, self.dtype))

    def _trace(self, hop_count: int) -> StepMany:
        eager = self.model.step_many
        self.compiles += 1
        if self.sealed:
            log.warning("tracing step_many for %d hops on a live tick", hop_count)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about Python ints from sizes
                graph = torch.jit.trace(_StepMany(self.model), self._example(2, hop_count, 0),
                                        strict=False, check_trace=False)
            problem = self._disagreement(graph, hop_count)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            log.warning("step_many for %d hops runs eager: %s", hop_count, problem)
            self.fallbacks[hop_count] = problem
            return eager
        return graph

    def _disagreement(self, graph: StepMany, hop_count: int) -> str | None:
        """Why the graph differs from the eager step on a batch of 3 over a few calls, or None."""
        hops, eager_state = self._example(3, hop_count, 1)
        traced_state = dict(eager_state)
        for _ in range(CHECK_CALLS):
            eager_out, eager_state = self.model.step_many(hops, eager_state)
            traced_out, traced_state = graph(hops, traced_state)
            scale = float(eager_out.abs().max()) + 1e-6
            error = float((traced_out - eager_out).abs().max()) / scale
            if set(traced_state) != set(eager_state):
                return "traced state has other keys than eager"
            if error > CHECK_TOLERANCE:
                return f"traced output differs from eager by {error:.2e} of its peak"
            hops = hops.roll(1, dims=1)
        return None
