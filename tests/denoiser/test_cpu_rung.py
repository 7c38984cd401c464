"""The rung per device (issue 17): `--cpu-model-weights` (DENOISE_SFU_CPU_MODEL_WEIGHTS) picks
the model a CPU device runs; CUDA keeps `--model-weights` (the full model by default). Checked
on the real settings, the real engine `serve` builds and a real `denoise-sfu worker` process."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from denoiser.engine.local import LocalEngine
from denoiser.model.gtcrn import GTCRN48
from denoiser.model.weights import weights_for_device
from denoiser.worker.client import RemoteEngine
from sfu.app import build_engine, child_worker_flags
from sfu.settings import Settings, add_arguments, from_sources


def test_the_cpu_rung_applies_to_cpu_devices_only() -> None:
    assert weights_for_device("cpu", None, "small") == "small"
    assert weights_for_device("cpu", "dfn3.pt", "small") == "small"
    assert weights_for_device("cpu", "dfn3.pt", None) == "dfn3.pt"
    assert weights_for_device("cpu", None, None) is None
    assert weights_for_device("cuda", None, "small") is None  # the full model on CUDA
    assert weights_for_device("cuda:1", "dfn3.pt", "small") == "dfn3.pt"


def test_the_setting_reads_its_flag_and_variable() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"DENOISE_SFU_CPU_MODEL_WEIGHTS": "small"}
    assert from_sources(None, env).cpu_model_weights == "small"
    given = from_sources(parser.parse_args(["--cpu-model-weights", "gtcrn48.pt"]), env)
    assert given.cpu_model_weights == "gtcrn48.pt"
    assert from_sources(None, {}).cpu_model_weights is None
    flags = child_worker_flags(Settings(engine="workers", cpu_model_weights="small"))
    assert flags[flags.index("--cpu-model-weights") + 1] == "small"
    assert "--cpu-model-weights" not in child_worker_flags(Settings(engine="workers"))


async def test_serve_builds_its_cpu_engine_with_the_cpu_rung() -> None:
    engine = await build_engine(Settings(device="cpu", cpu_model_weights="small", max_streams=2))
    assert isinstance(engine, LocalEngine) and isinstance(engine.model, GTCRN48)
    engine = await build_engine(Settings(device="cpu", max_streams=2))
    assert isinstance(engine, LocalEngine) and not isinstance(engine.model, GTCRN48)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _welcome_of(*flags: str, env: dict[str, str] | None = None) -> str:
    """Start a real `denoise-sfu worker` on the CPU, return its WELCOME's description."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfu.cli", "worker", "--device", "cpu", "--listen",
        f"127.0.0.1:{port}", "--max-streams", "2", "--log-format", "text", *flags,
        env={**os.environ, **(env or {})}, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(f"worker exited with {proc.returncode}")
            try:
                engine = RemoteEngine(f"127.0.0.1:{port}", connect_timeout=1.0)
                await engine.start()
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("worker never answered")
        try:
            assert engine.welcome is not None
            return engine.welcome.description
        finally:
            await engine.close()
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.slow
async def test_a_cpu_worker_runs_the_rung_it_is_given() -> None:
    assert await _welcome_of("--cpu-model-weights", "small") == "small on cpu"
    assert await _welcome_of(env={"DENOISE_SFU_CPU_MODEL_WEIGHTS": "small"}) == "small on cpu"
    assert await _welcome_of() == "default on cpu"
