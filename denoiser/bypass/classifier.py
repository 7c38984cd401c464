"""The small speech / music / noise / speech-over-music model: standardise, one hidden layer,
softmax, in numpy (a few thousand multiply-adds per hop).

A file may hold several such models (an ensemble: keys `members` = k and `mean_0`, `w1_0`, ...,
one set per member); their probabilities are averaged, or with `combine` = "max" each class
takes its largest member (music where any member hears music: members trained on different
music each know their own). All members' first layers run as one
product (inputs a member was not trained on get zero weights), so a member costs little more
than its hidden units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiser.paths import MODELS_DIR

# "speech_over_music" is an announcement on hold: it may keep a music bypass, never start one.
CLASSES: tuple[str, ...] = ("speech", "music", "noise", "speech_over_music")
DEFAULT_PATH = MODELS_DIR / "bypass_classifier.npz"
# one model's arrays; in an ensemble file each has the suffix _k of member k
MEMBER_FIELDS: tuple[str, ...] = ("mean", "std", "w1", "b1", "w2", "b2")


class MusicClassifier:
    """Loads `models/bypass_classifier.npz` (mean, std, w1, b1, w2, b2) and scores feature rows."""

    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: train it with `python -m denoiser.training.bypass_classifier`")
        with np.load(path) as z:
            keys = ([f"_{k}" for k in range(int(z["members"]))] if "members" in z.files
                    else [""])
            members = [{n: z[n + k].astype(np.float32) for n in MEMBER_FIELDS} for k in keys]
            self.combine = str(z["combine"]) if "combine" in z.files else "mean"
        if self.combine not in ("mean", "max"):
            raise ValueError(f"{path}: combine must be mean or max, got {self.combine!r}")
        m = members[0]
        self.mean, self.std, self.w1, self.b1, self.w2, self.b2 = (
            m["mean"], m["std"], m["w1"], m["b1"], m["w2"], m["b2"])
        n_in = max(len(m["mean"]) for m in members)
        # the standardisation folded into the first layer, every member side by side: one
        # product per call
        w1s, b1s, self._cuts = [], [], [0]
        for m in members:
            w = m["w1"] / m["std"][:, None]
            w1s.append(np.pad(w, ((0, n_in - len(w)), (0, 0))))
            b1s.append(m["b1"] - (m["mean"] / m["std"]) @ m["w1"])
            self._cuts.append(self._cuts[-1] + w.shape[1])
        self._w1 = np.concatenate(w1s, axis=1).astype(np.float32)
        self._b1 = np.concatenate(b1s).astype(np.float32)
        self._w2 = [m["w2"] for m in members]
        self._b2 = [m["b2"] for m in members]
        self.members = len(members)

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one feature vector [F] or a batch [N, F]."""
        # a model trained on fewer inputs (an older feature set: new cues are appended at the
        # end of the vector) reads the first ones
        h = x[..., : self._w1.shape[0]] @ self._w1
        h += self._b1
        np.tanh(h, out=h)
        out = None
        for k in range(self.members):
            z = h[..., self._cuts[k] : self._cuts[k + 1]] @ self._w2[k]
            z += self._b2[k]
            z -= z.max(axis=-1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=-1, keepdims=True)
            if out is None:
                out = z
            elif self.combine == "max":
                np.maximum(out, z, out=out)
            else:
                out += z
        assert out is not None
        if self.members > 1 and self.combine == "mean":
            out /= self.members
        return out
