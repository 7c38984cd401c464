"""`denoise-sfu serve` as a real process: generated secret and demo link, the shipped engine,
health and metrics, clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sfu.auth import verify_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def test_serve_process(host_ip: str) -> None:
    port = free_port(host_ip)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_SFU_")}
    env["DENOISE_SFU_PORT"] = str(port)  # flags and variables both reach the one Settings
    proc = subprocess.Popen([sys.executable, "-m", "sfu.cli", "serve", "--host", host_ip],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = f"http://{host_ip}:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert b"denoise_sfu_rooms 0.0" in resp.read()
        # A run with a generated secret is a demo: the page may ask for a token by name.
        request = urllib.request.Request(base + "/demo/token", method="POST",
                                         data=b'{"room": "demo", "name": "ada"}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            demo = json.loads(resp.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"Demo page (open it in two browsers): {base}/?room=demo" in out
    link = re.search(r"Invitation link for one identity: (\S+)", out)
    secret = re.search(r"--secret (\S+)", out)
    assert link and secret, out
    assert link.group(1).startswith(f"{base}/?room=demo&token=")
    claims = verify_token(secret.group(1), link.group(1).split("token=")[1])
    assert claims.room == "demo" and claims.grants == {"publish", "subscribe"}
    demo_claims = verify_token(secret.group(1), demo["token"])
    assert demo_claims.room == "demo" and demo["identity"].startswith("ada-")
    assert '"msg": "listening"' in err and '"msg": "stopped"' in err
    capacity = re.search(r'"msg": "engine capacity", "max_streams": (\d+), "measured": true', err)
    assert capacity and int(capacity.group(1)) >= 1, err  # measured on this CPU at start
