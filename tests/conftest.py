"""Shared fixtures: the machine's real interface address, a running SFU, tokens, Opus files.

aioice does not offer loopback host candidates, so servers and peers in tests meet on the
address of the default route's interface (no packet leaves the machine).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import soundfile
from aiohttp import web

from denoiser.engine import Engine
from denoiser.paths import SHARED_DATA_DIR
from sfu.app import create_app
from sfu.auth import GRANTS, issue_token
from sfu.bench.harness import interface_address
from sfu.settings import Settings
from support.sample_audio import SPEECH_FILE
from support.sfu import TEST_SECRET, RunningSfu, SfuFactory, write_opus


@pytest.fixture(scope="session")
def host_ip() -> str:
    address = interface_address()
    if address.startswith("127."):
        pytest.skip("no non-loopback interface for aiortc peers")
    return address


@pytest.fixture
def make_token() -> Callable[..., str]:
    """`make_token(room, identity, ttl=600, grants=GRANTS, secret=TEST_SECRET)`."""
    def make(room: str, identity: str, ttl: int = 600, grants: tuple[str, ...] = GRANTS,
             secret: str = TEST_SECRET, now: float | None = None) -> str:
        return issue_token(secret, room, identity, ttl, grants, now=now)
    return make


@pytest.fixture
async def sfu_factory(host_ip: str) -> AsyncIterator[SfuFactory]:
    """Start SFUs with `await sfu_factory(engine, **settings_overrides)`; all stop at teardown."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(engine: Engine | None, **overrides: object) -> RunningSfu:
        settings = dataclasses.replace(Settings(secret=TEST_SECRET, host=host_ip, port=0),
                                       **overrides)
        app = create_app(settings, engine=engine)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, host_ip, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return RunningSfu(app, f"http://{host_ip}:{port}", session)

    yield start
    for session in sessions:
        await session.close()
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture(scope="session")
def speech_opus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 48 kHz speech recording (shipped in tests/data), as an Ogg/Opus file."""
    samples, rate = soundfile.read(SPEECH_FILE, dtype="float32", always_2d=True)
    return write_opus(tmp_path_factory.mktemp("opus") / "speech.ogg", samples.mean(axis=1), rate)


@pytest.fixture
async def gain_engine() -> AsyncIterator[Engine]:
    """A real LocalEngine on CPU running `GainModel(gain=0.5)`: a denoiser with a known answer
    (output = half the input, 240 samples late), so tests can tell the denoised path."""
    import torch

    from denoiser.engine.local import LocalEngine
    from support.models import GainModel

    torch.set_num_threads(1)
    engine = LocalEngine(GainModel(delay=240, gain=0.5), device="cpu", max_streams=8,
                         tick_deadline=0.002)
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
async def model_engine() -> AsyncIterator[Engine]:
    """The real LocalEngine with the shipped DFN3 model on CPU, one torch thread (CI: 2 cores)."""
    import torch

    from denoiser.engine.local import LocalEngine
    from denoiser.model.weights import load_default_model

    torch.set_num_threads(1)
    engine = LocalEngine(load_default_model("cpu"), device="cpu", max_streams=4)
    await engine.start()
    yield engine
    await engine.close()


TIER_MARKERS = {"e2e": pytest.mark.e2e, "offline": pytest.mark.offline}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/e2e/ and tests/offline/ carry their tier's marker, so the inner loop
    is `pytest -m "not slow and not e2e"`.

    Tests marked `corpus` (they are about the training corpus itself) skip, saying why, when
    there is none: DENOISE_SFU_DATA_DIR unset and no ../shared/data beside the checkout. A
    DENOISE_SFU_DATA_DIR that names no folder is a mistake, not a reason to skip."""
    for item in items:
        parts = Path(str(item.path)).parts
        for tier, marker in TIER_MARKERS.items():
            if tier in parts[-2:-1]:
                item.add_marker(marker)
    if SHARED_DATA_DIR.is_dir():
        return
    if os.environ.get("DENOISE_SFU_DATA_DIR"):
        raise pytest.UsageError(f"DENOISE_SFU_DATA_DIR={SHARED_DATA_DIR} is not a folder")
    skip = pytest.mark.skip(reason=f"needs the training corpus: set DENOISE_SFU_DATA_DIR "
                                   f"(none at {SHARED_DATA_DIR}; README, 'Training corpus')")
    for item in items:
        if item.get_closest_marker("corpus"):
            item.add_marker(skip)
