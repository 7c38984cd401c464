"""The small rung's fast path equals its reference implementation: `tests/data/
gtcrn48_reference.pt` holds the output of GTCRN48 as it was before the speed work (batch
norms as separate passes, SFE as copies, per-GRU projections reordered by copies; commit
44c2b10) on a fixed two-stream input, with GTCRN's published weights
(`models/gtcrn48_published.pt`, the parent of the fine-tuned `gtcrn48.pt`); the current code,
eager and traced as the engine runs it, in batches and one stream at a time, must give the same
samples (its `what` says how the file was made)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from denoiser.model.gtcrn import GTCRN48
from denoiser.model.gtcrn.network import GroupedGRU, gru_scan
from denoiser.model.traced import TracedSteps
from denoiser.model.weights import load_default_model

torch.set_num_threads(1)
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "gtcrn48_reference.pt"
PUBLISHED = "gtcrn48_published.pt"  # the weights the reference was made with
TOLERANCE_DB = -90.0  # of the reference's peak: float32 rounding of a re-ordered sum


@pytest.fixture(scope="module")
def model() -> GTCRN48:
    return load_default_model(weights=PUBLISHED)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE, weights_only=True)


def error_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(20 * torch.log10((out - ref).abs().max() / ref.abs().max() + 1e-30))


def stepped(step, model: GTCRN48, x: torch.Tensor, hops: int) -> torch.Tensor:
    state = model.initial_state(x.shape[0])
    outs = []
    for chunk in x.split(hops * model.hop_size, dim=1):
        out, state = step(chunk, state)
        outs.append(out)
    return torch.cat(outs, dim=1)


@torch.inference_mode()
def test_fast_path_equals_the_reference_implementation(model: GTCRN48,
                                                       reference: dict[str, torch.Tensor]
                                                       ) -> None:
    x, ref = reference["input"], reference["output"]
    assert ref.abs().max() > 1e-3  # the reference says something
    assert error_db(stepped(model.step_many, model, x, 2), ref) < TOLERANCE_DB
    assert error_db(model(x), ref) < TOLERANCE_DB  # offline, all frames in one call
    traced = TracedSteps(model)
    traced.prepare(2)
    assert traced.traced == [2], traced.fallbacks
    assert error_db(stepped(traced, model, x, 2), ref) < TOLERANCE_DB


@torch.inference_mode()
def test_fast_path_batched_equals_single_streams(model: GTCRN48,
                                                 reference: dict[str, torch.Tensor]) -> None:
    x, ref = reference["input"], reference["output"]
    traced = TracedSteps(model)
    for row in range(x.shape[0]):
        single = stepped(traced, model, x[row:row + 1], 2)
        assert error_db(single[0], ref[row]) < TOLERANCE_DB


@torch.inference_mode()
def test_fused_grus_equal_torch_grus() -> None:
    """The grouped GRUs as one gate-major recurrence (block-diagonal weights) against torch's
    own nn.GRU on each half, both directions."""
    torch.manual_seed(0)
    for bidirectional in (False, True):
        gru = GroupedGRU(16, 8 if bidirectional else 16, bidirectional).eval()
        x = torch.randn(5, 7, 16)
        hidden = gru.rnn1.hidden_size
        h0 = torch.randn(5, 2 * hidden) if not bidirectional else None
        y, last = gru(x, h0)
        parts = []
        for i, rnn in enumerate((gru.rnn1, gru.rnn2)):
            xi = x[..., 8 * i:8 * (i + 1)]
            hi = (h0[:, hidden * i:hidden * (i + 1)][None] if h0 is not None
                  else torch.zeros(2, 5, hidden))
            yi, _ = rnn(xi, hi)
            parts.append(yi)
        expected = torch.cat(parts, dim=-1)
        assert (y - expected).abs().max() < 1e-5
        if not bidirectional:
            assert (last - expected[:, -1]).abs().max() < 1e-5
    # the scan's update h = n + z * (h - n) (torch.lerp) against the textbook GRU cell
    cell = torch.nn.GRUCell(4, 6).eval()
    inputs = torch.randn(3, 5, 4)
    h = torch.randn(3, 6)
    ys, _ = gru_scan(torch.nn.functional.linear(inputs, cell.weight_ih, cell.bias_ih), h,
                     cell.weight_hh, cell.bias_hh)
    expected_h = h
    for s in range(5):
        expected_h = cell(inputs[:, s], expected_h)
        assert (ys[:, s] - expected_h).abs().max() < 1e-5


def test_derived_weights_follow_the_parameters() -> None:
    """Folded/fused weights are kept between inference calls, remade when the parameters
    change (load_state_dict), and made on the autograd graph in training."""
    fresh = load_default_model(weights="small")
    block = fresh.core.encoder[0]  # type: ignore[attr-defined]
    x = torch.randn(2, 3, 33, 16)
    cache, h = torch.zeros(2, 2, 33, 16), torch.zeros(2, 16)
    with torch.inference_mode():
        before = block(x, cache, h)[0]
        assert block(x, cache, h)[0].equal(before)
    weights = {k: v.clone() for k, v in block.state_dict().items()}
    weights["bn2.scale"] = weights["bn2.scale"] * 0.5
    block.load_state_dict(weights)
    with torch.inference_mode():
        assert not block(x, cache, h)[0].equal(before)  # the kept weights were remade
    block.requires_grad_(True).train()
    block(x, cache, h)[0].square().sum().backward()
    assert block.point1.weight.grad is not None and block.bn1.scale.grad is not None
