"""libopus through ctypes, for the Opus round trips of training data augmentation.

Why not PyAV (which the SFU uses): training also runs on bare GPU boxes where PyAV is missing,
while libopus is one small C library with no dependencies. The library is found, in order, at
`$DENOISE_SFU_LIBOPUS`, beside the installed PyAV (its wheel bundles `av.libs/libopus-*.so*`),
or wherever the system keeps `libopus`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
from functools import cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 48_000
APPLICATIONS = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010
_GET_LOOKAHEAD = 4027
_MAX_PACKET = 4000  # bytes; libopus's recommended upper bound for one packet


class OpusError(RuntimeError):
    pass


def _candidates() -> list[str]:
    found = []
    if env := os.environ.get("DENOISE_SFU_LIBOPUS"):
        found.append(env)
    try:
        spec = importlib.util.find_spec("av")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        libs = Path(spec.origin).parent.parent / "av.libs"
        found += sorted(glob.glob(str(libs / "libopus*.so*")))
    if system := ctypes.util.find_library("opus"):
        found.append(system)
    return found


@cache
def library() -> ctypes.CDLL:
    """The loaded libopus, with the signatures used here declared."""
    tried = _candidates()
    for path in tried:
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError:
            continue
    else:
        raise OpusError(f"libopus not found (tried {tried or 'nothing'}); install PyAV or "
                        "libopus, or set DENOISE_SFU_LIBOPUS to the library's path")
    c_int, c_void_p, c_int32 = ctypes.c_int, ctypes.c_void_p, ctypes.c_int32
    lib.opus_encoder_create.restype = c_void_p
    lib.opus_encoder_create.argtypes = [c_int32, c_int, c_int, ctypes.POINTER(c_int)]
    lib.opus_encoder_destroy.argtypes = [c_void_p]
    lib.opus_encode_float.restype = c_int32
    lib.opus_encode_float.argtypes = [c_void_p, ctypes.POINTER(ctypes.c_float), c_int,
                                      ctypes.c_char_p, c_int32]
    lib.opus_decoder_create.restype = c_void_p
    lib.opus_decoder_create.argtypes = [c_int32, c_int, ctypes.POINTER(c_int)]
    lib.opus_decoder_destroy.argtypes = [c_void_p]
    lib.opus_decode_float.restype = c_int
    lib.opus_decode_float.argtypes = [c_void_p, ctypes.c_char_p, c_int32,
                                      ctypes.POINTER(ctypes.c_float), c_int, c_int]
    lib.opus_encoder_ctl.restype = c_int  # variadic: arguments passed as explicit ctypes
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [c_int]
    return lib


def _check(code: int, what: str) -> int:
    if code < 0:
        raise OpusError(f"{what}: {library().opus_strerror(code).decode()}")
    return code


class Encoder:
    """A mono 48 kHz libopus encoder; `encode` takes one frame of float samples."""

    def __init__(self, bitrate: int, application: str = "voip") -> None:
        if application not in APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(APPLICATIONS)}")
        lib, err = library(), ctypes.c_int(0)
        self._lib = lib
        self._st = lib.opus_encoder_create(SAMPLE_RATE, 1, APPLICATIONS[application],
                                           ctypes.byref(err))
        _check(err.value, "opus_encoder_create")
        _check(lib.opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(_SET_BITRATE),
                                    ctypes.c_int32(int(bitrate))), "set bitrate")
        _check(lib.opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(_SET_COMPLEXITY),
                                    ctypes.c_int32(10)), "set complexity")  # as FFmpeg does
        self._buf = ctypes.create_string_buffer(_MAX_PACKET)

    @property
    def lookahead(self) -> int:
        """Samples the decoded signal lags the input (what an Ogg header calls pre-skip)."""
        value = ctypes.c_int32(0)
        _check(self._lib.opus_encoder_ctl(ctypes.c_void_p(self._st),
                                          ctypes.c_int(_GET_LOOKAHEAD), ctypes.byref(value)),
               "get lookahead")
        return int(value.value)

    def encode(self, frame: np.ndarray) -> bytes:
        pcm = np.ascontiguousarray(frame, dtype=np.float32)
        n = _check(self._lib.opus_encode_float(
            self._st, pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(pcm), self._buf,
            _MAX_PACKET), "opus_encode_float")
        return self._buf.raw[:n]

    def __del__(self) -> None:
        if getattr(self, "_st", None):
            self._lib.opus_encoder_destroy(self._st)
            self._st = None


class Decoder:
    """A mono 48 kHz libopus decoder."""

    def __init__(self) -> None:
        lib, err = library(), ctypes.c_int(0)
        self._lib = lib
        self._st = lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(err))
        _check(err.value, "opus_decoder_create")
        self._pcm = np.zeros(SAMPLE_RATE * 120 // 1000, np.float32)  # the longest Opus frame

    def decode(self, packet: bytes) -> np.ndarray:
        n = _check(self._lib.opus_decode_float(
            self._st, packet, len(packet), self._pcm.ctypes.data_as(
                ctypes.POINTER(ctypes.c_float)), len(self._pcm), 0), "opus_decode_float")
        return self._pcm[:n].copy()

    def __del__(self) -> None:
        if getattr(self, "_st", None):
            self._lib.opus_decoder_destroy(self._st)
            self._st = None
