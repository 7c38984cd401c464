"""The product as a user installs it: a wheel (then `pip install .`) in a fresh virtual
environment in a temporary folder, run from there with nothing of the checkout on the path.

The wheel is built from a copy of the tracked files (nothing untracked or stale in `build/`
can slip in). The venv is a plain `python -m venv` (no system site-packages, so the checkout's
editable install is invisible); pip installs the wheel's declared dependencies, except that
torch, the one large dependency, is linked from the running interpreter's own installation
(a fresh CPU torch unpacks 800 MB: 57 s against 28 s for the whole test on the shared 2-core
machine). The installed package must then find its weights, classifier and page inside the
venv: `denoise-sfu denoise` on a short file, `token`, and `serve` until `/` and `/healthz`
answer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
RUNTIME_FILES = ("denoiser/_shipped/models/dfn3_la1.pt", "denoiser/_shipped/models/dfn3.pt",
                 "denoiser/_shipped/models/bypass_classifier.npz",
                 "denoiser/_shipped/web/index.html", "denoiser/_shipped/web/app.js",
                 "denoiser/_shipped/web/style.css")
SECRET = "wheel-test-secret-0123456789abcdef0123456789"


def tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (plus untracked, not ignored ones) copied to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode != 0:  # not a git checkout (a source tarball): copy the tree
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "runs"))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user's shell with only `venv` activated."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DENOISE_SFU_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 180
        ) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    print(f"{time.monotonic() - start:5.1f} s  {' '.join(map(str, cmd))[:100]}")  # with -s
    assert done.returncode == 0, (f"{cmd} exited {done.returncode}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    return done


def link_torch(venv: Path) -> None:
    """Make the running interpreter's torch (and its metadata, so pip counts it installed)
    visible in `venv`'s site-packages, nothing else."""
    import torch

    site = Path(torch.__file__).resolve().parents[1]
    target = next((venv / "lib").glob("python3*/site-packages"))
    wanted = ["torch", "torchgen", "functorch", *(p.name for p in site.glob("torch-*.dist-info"))]
    for name in wanted:
        if (site / name).exists():
            (target / name).symlink_to(site / name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def check_installed(venv: Path, work: Path) -> None:
    """What a user runs after `pip install`, from a folder that is not the checkout."""
    env = clean_env(venv)
    python, cli = venv / "bin" / "python", venv / "bin" / "denoise-sfu"
    where = run([python, "-c", "import denoiser, denoiser.paths as p; "
                 "print(denoiser.__file__); print(p.MODELS_DIR); print(p.WEB_DIR)"], work, env)
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(venv.resolve()), where.stdout
    run([python, "-c", "from denoiser.bypass.classifier import MusicClassifier; "
         "MusicClassifier()"], work, env)

    token = run([cli, "token", "--room", "r1", "--identity", "ada", "--secret", SECRET],
                work, env).stdout.strip()
    assert token.count(".") == 2, token

    rate = 16_000
    t = np.arange(rate) / rate
    noisy = (0.3 * np.sin(2 * np.pi * 220 * t)
             + 0.05 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)
    soundfile.write(work / "in.wav", noisy, rate)
    run([cli, "denoise", "in.wav", "out.wav", "--device", "cpu"], work, env)
    out, out_rate = soundfile.read(work / "out.wav", dtype="float32")
    assert out_rate == rate and out.shape == noisy.shape
    assert np.isfinite(out).all() and np.abs(out).max() > 0

    port = free_port()
    server = subprocess.Popen([str(cli), "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--max-streams", "2", "--log-format", "text"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        health: tuple[int, str] | None = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = get(f"http://127.0.0.1:{port}/healthz")
                if '"ok"' in health[1]:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert server.poll() is None, server.communicate()[0][-3000:]
        assert health is not None and health[0] == 200 and '"ok"' in health[1], health
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in page.lower() and "app.js" in page
        assert get(f"http://127.0.0.1:{port}/app.js")[0] == 200
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_wheel_and_pip_install_dot_carry_what_runs(tmp_path: Path) -> None:
    source = tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", dist, source], tmp_path, dict(os.environ))
    (wheel,) = dist.glob("denoise_sfu-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in RUNTIME_FILES if f not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert not [n for n in names if "training_logs" in n or n.startswith(("tests/", "models/"))]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, clean_env(venv))
    link_torch(venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    run([*pip, wheel], tmp_path, clean_env(venv), timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    check_installed(venv, work)

    # `pip install .` (not editable) from the source folder gives the same product.
    run([*pip, "--force-reinstall", "--no-deps", "."], source, clean_env(venv), timeout=300)
    shutil.rmtree(source)  # nothing may point back at the source folder
    for stale in ("in.wav", "out.wav"):
        (work / stale).unlink()
    check_installed(venv, work)
