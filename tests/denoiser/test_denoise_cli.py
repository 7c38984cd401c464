"""`denoise-sfu denoise` end to end on generated files: rate, length, channels and alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from sfu.cli import main
from support.sample_audio import speech_48k

GAIN_MODEL = "support.models:make_gain"  # output = 0.5 x input, 240-sample latency
TINY_MODEL = "support.models:make_tiny"


def make_signal(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Tones well inside every rate's band, plus a few clicks to pin alignment."""
    t = np.arange(int(rate * seconds)) / rate
    f = 440 + 60 * seed
    x = 0.2 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * 1250 * t + 1.0)
    for at in (0.21, 0.57, 0.93):
        if at < seconds:
            x[int(at * rate)] = 0.9
    return x.astype(np.float32)


def lag_of(reference: np.ndarray, y: np.ndarray, max_lag: int = 50) -> int:
    lags = range(-max_lag, max_lag + 1)
    scores = [float(np.dot(reference[max_lag:-max_lag], np.roll(y, -lag)[max_lag:-max_lag]))
              for lag in lags]
    return list(lags)[int(np.argmax(scores))]


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_bypass_and_denoise_keep_rate_length_and_alignment(tmp_path: Path, rate: int) -> None:
    x = make_signal(rate, 1.2)
    src = tmp_path / "in.wav"
    soundfile.write(src, x, rate, subtype="PCM_16")
    x = soundfile.read(src, dtype="float32")[0]
    for mode, gain in (("off", 1.0), ("on", 0.5)):
        dst = tmp_path / f"out_{mode}.wav"
        assert main(["denoise", str(src), str(dst), "--mode", mode, "--model", GAIN_MODEL,
                     "--device", "cpu"]) == 0
        y, out_rate = soundfile.read(dst, dtype="float32")
        info = soundfile.info(dst)
        assert out_rate == rate and y.shape == x.shape and info.subtype == "PCM_16"
        assert lag_of(x, y) == 0
        # Sample-exact: equal to the input up to quantisation, away from the clicks (which
        # the round trip through 48 kHz band-limits) and the edges.
        keep = np.ones(x.size, bool)
        keep[: rate // 50] = keep[-rate // 50:] = False
        for at in (0.21, 0.57, 0.93):
            keep[int(at * rate) - rate // 100: int(at * rate) + rate // 100] = False
        err = np.abs(y[keep] - gain * x[keep]).max()
        assert err < 2e-3, (mode, err)
        for at in (0.21, 0.57, 0.93):
            i = int(at * rate)
            assert int(np.argmax(np.abs(y[i - 20:i + 21]))) == 20


def test_stereo_is_mixed_to_mono_and_said(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rate = 48_000
    left = make_signal(rate, 0.5)
    right = make_signal(rate, 0.5, seed=1) * 0.5
    src, dst = tmp_path / "st.wav", tmp_path / "st_out.flac"
    soundfile.write(src, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    assert main(["denoise", str(src), str(dst), "--mode", "on", "--model", GAIN_MODEL]) == 0
    assert "2 channels; mixed to mono" in capsys.readouterr().err
    y, out_rate = soundfile.read(dst, dtype="float32")
    assert out_rate == rate and y.ndim == 1 and y.size == left.size
    np.testing.assert_allclose(y, 0.5 * (left + right) / 2, atol=2e-4)  # FLAC is 16-bit


def test_tiny_model_runs_through_the_cli(tmp_path: Path) -> None:
    rate = 16_000
    x = make_signal(rate, 0.6)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    soundfile.write(src, x, rate)
    assert main(["denoise", str(src), str(dst), "--mode", "on", "--model", TINY_MODEL]) == 0
    y = soundfile.read(dst, dtype="float32")[0]
    assert y.size == x.size and np.abs(y).max() > 0.01


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"this is not audio at all", "cannot read audio"),
    ("empty", "no audio samples"),
])
def test_unusable_inputs_get_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          content: bytes | str | None, message: str) -> None:
    src = tmp_path / "bad.wav"
    if content == "empty":
        soundfile.write(src, np.zeros(0, np.float32), 16_000)
    elif isinstance(content, bytes):
        src.write_bytes(content)
    assert main(["denoise", str(src), str(tmp_path / "o.wav"), "--model", GAIN_MODEL]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_model_and_output_directory(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.wav"
    soundfile.write(src, make_signal(16_000, 0.2), 16_000)
    assert main(["denoise", str(src), str(tmp_path / "o.wav"), "--model", "nope"]) == 2
    assert main(["denoise", str(src), str(tmp_path / "no" / "o.wav"),
                 "--model", GAIN_MODEL]) == 2
    err = capsys.readouterr().err
    assert "module:factory" in err and "no such directory" in err


def test_default_model_removes_noise_and_keeps_speech(tmp_path: Path) -> None:
    rate = 48_000
    speech = speech_48k()[int(0.6 * rate):int(2.1 * rate)]  # 1.5 s of talking
    noise = np.random.default_rng(0).standard_normal(speech.size).astype(np.float32)
    noise *= 0.3 * np.sqrt(np.mean(speech**2))
    lead = int(0.3 * rate)  # noise alone first
    noisy = np.concatenate([noise[:lead], speech + noise])
    src, dst = tmp_path / "noisy.wav", tmp_path / "clean.wav"
    soundfile.write(src, noisy, rate, subtype="FLOAT")
    assert main(["denoise", str(src), str(dst), "--mode", "on", "--device", "cpu"]) == 0
    y = soundfile.read(dst, dtype="float32")[0]
    assert y.size == noisy.size
    noise_in = np.sqrt(np.mean(noisy[lead // 2:lead] ** 2))
    noise_out = np.sqrt(np.mean(y[lead // 2:lead] ** 2))
    assert noise_out < 0.3 * noise_in  # at least 10 dB less noise
    assert lag_of(noisy[lead:], y[lead:], max_lag=100) == 0  # speech stays aligned
