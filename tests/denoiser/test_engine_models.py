"""The known-answer models of `support.models` keep their own promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.models import HOP, TinyConvGRU


def test_tiny_model_step_matches_offline_forward() -> None:
    model = TinyConvGRU().eval()
    audio = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 10 * HOP)) * 0.1)
    audio = audio.float()
    with torch.no_grad():
        offline = model(audio)
        state = model.initial_state(3)
        outs = []
        for hop in audio.split(HOP, dim=1):
            out, state = model.step(hop, state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), offline)
    # The output really depends on the recurrent state (not a plain gain).
    assert offline.abs().sum() > 0
    assert not torch.allclose(offline[:, HOP:], audio[:, HOP - 240: -240] * 0.5)


def test_default_step_many_is_stepping() -> None:
    """`StreamingModel.step_many`'s default runs `step` once per hop: exactly the same output
    and state; a length that is not whole hops is refused."""
    model = TinyConvGRU().eval()
    audio = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 6 * HOP)) * 0.1)
    audio = audio.float()
    with torch.no_grad():
        state = model.initial_state(2)
        stepped = []
        for hop in audio.split(HOP, dim=1):
            out, state = model.step(hop, state)
            stepped.append(out)
        many_state = model.initial_state(2)
        many = []
        for block in audio.split(3 * HOP, dim=1):
            out, many_state = model.step_many(block, many_state)
            many.append(out)
    assert torch.equal(torch.cat(many, dim=1), torch.cat(stepped, dim=1))
    assert all(torch.equal(many_state[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="expected hops"):
        model.step_many(audio[:, :HOP + 1], model.initial_state(2))
