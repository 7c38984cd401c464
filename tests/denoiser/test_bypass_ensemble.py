"""The ensemble builder: members taken from single models and from ensemble files score as the
classifier's combination of them (denoiser/bypass/classifier.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from denoiser.bypass.classifier import DEFAULT_PATH, MusicClassifier
from denoiser.bypass.features import N_FEATURES
from denoiser.training.bypass_ensemble import main


def single_model(path: Path, n_in: int, hidden: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, mean=rng.normal(size=n_in), std=rng.uniform(0.5, 2, n_in),
             w1=rng.normal(size=(n_in, hidden)), b1=rng.normal(size=hidden),
             w2=rng.normal(size=(hidden, 4)), b2=rng.normal(size=4))
    return path


def test_members_combine_as_their_maximum(tmp_path: Path) -> None:
    shipped = MusicClassifier(DEFAULT_PATH)
    extra = single_model(tmp_path / "extra.npz", 30, 8, seed=1)  # an older feature set
    out = tmp_path / "ens.npz"
    assert main([str(out), str(extra), *(f"{DEFAULT_PATH}:{k}" for k in range(shipped.members)),
                 "--report", str(tmp_path / "r.json"), "--about", "test"]) == 0
    ens = MusicClassifier(out)
    assert ens.members == shipped.members + 1 and ens.combine == "max"
    x = np.random.default_rng(2).normal(size=(50, N_FEATURES)).astype(np.float32)
    expected = np.maximum(MusicClassifier(extra).proba(x), shipped.proba(x))
    np.testing.assert_allclose(ens.proba(x), expected, rtol=1e-5, atol=1e-6)


def test_bad_member_specs_are_refused(tmp_path: Path) -> None:
    one = single_model(tmp_path / "one.npz", 24, 4, seed=0)
    with pytest.raises(ValueError, match="ensemble"):
        main([str(tmp_path / "o.npz"), str(DEFAULT_PATH)])
    with pytest.raises(ValueError, match="one model"):
        main([str(tmp_path / "o.npz"), f"{one}:0"])
    with pytest.raises(ValueError, match="no member"):
        main([str(tmp_path / "o.npz"), f"{DEFAULT_PATH}:9"])
    bad = tmp_path / "bad.npz"
    with np.load(one) as z:
        np.savez(bad, **{k: z[k] for k in z.files if k != "b1"}, b1=np.zeros(5))
    with pytest.raises(ValueError, match="inconsistent"):
        main([str(tmp_path / "o.npz"), str(bad)])
