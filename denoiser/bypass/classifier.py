"""The small speech / music / noise / speech-over-music model: standardise, one hidden layer,
softmax, in numpy (a few thousand multiply-adds per hop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from denoiser.paths import MODELS_DIR

# "speech_over_music" is an announcement on hold: it may keep a music bypass, never start one.
CLASSES: tuple[str, ...] = ("speech", "music", "noise", "speech_over_music")
DEFAULT_PATH = MODELS_DIR / "bypass_classifier.npz"


class MusicClassifier:
    """Loads `models/bypass_classifier.npz` (mean, std, w1, b1, w2, b2) and scores feature rows."""

    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: train it with `python -m denoiser.training.bypass_classifier`")
        with np.load(path) as z:
            self.mean = z["mean"].astype(np.float32)
            self.std = z["std"].astype(np.float32)
            self.w1, self.b1 = z["w1"].astype(np.float32), z["b1"].astype(np.float32)
            self.w2, self.b2 = z["w2"].astype(np.float32), z["b2"].astype(np.float32)
        # the standardisation folded into the first layer: one product per call
        self._w1 = (self.w1 / self.std[:, None]).astype(np.float32)
        self._b1 = (self.b1 - (self.mean / self.std) @ self.w1).astype(np.float32)

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one feature vector [F] or a batch [N, F]."""
        # a model trained on fewer inputs (an older feature set: new cues are appended at the
        # end of the vector) reads the first ones
        h = x[..., : self._w1.shape[0]] @ self._w1
        h += self._b1
        np.tanh(h, out=h)
        z = h @ self.w2
        z += self.b2
        z -= z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=-1, keepdims=True)
        return z
