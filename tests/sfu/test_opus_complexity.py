"""The speakers' Opus complexity is a setting (`--opus-complexity`, DENOISE_SFU_OPUS_COMPLEXITY)
that reaches the encoder: a different complexity gives a different bitstream."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from sfu.media.encoder import OpusPacketEncoder
from sfu.settings import SettingsError, add_arguments, from_sources


def test_flag_and_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_sources(parser.parse_args([]), env={}).opus_complexity == 10
    assert from_sources(parser.parse_args([]),
                        env={"DENOISE_SFU_OPUS_COMPLEXITY": "3"}).opus_complexity == 3
    args = parser.parse_args(["--opus-complexity", "5"])
    assert from_sources(args, env={"DENOISE_SFU_OPUS_COMPLEXITY": "3"}).opus_complexity == 5
    with pytest.raises(SettingsError):
        from_sources(parser.parse_args(["--opus-complexity", "11"]), env={})
    assert from_sources(parser.parse_args([]), env={}).forward_mode_off is True
    assert from_sources(parser.parse_args([]), env={"DENOISE_SFU_FORWARD_MODE_OFF": "no"}
                        ).forward_mode_off is False


def test_complexity_reaches_libopus() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(960 * 50) / 48_000
    audio = (0.3 * np.sin(2 * np.pi * 300 * t * (1 + t)) +
             0.05 * rng.standard_normal(t.shape)).astype(np.float32)

    def encode(complexity: int) -> list[bytes]:
        encoder = OpusPacketEncoder(complexity=complexity)
        return [bytes(p) for i in range(0, audio.size, 960)
                for p in encoder.encode(audio[i:i + 960])]

    low, high = encode(0), encode(10)
    assert len(low) == len(high) == 50
    assert low != high  # libopus took the option
    assert encode(0) == low  # and is deterministic for one complexity
    with pytest.raises(ValueError):
        OpusPacketEncoder(complexity=-1)
