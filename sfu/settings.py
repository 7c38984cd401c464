"""One settings object for the SFU, read from CLI flags and `DENOISE_SFU_*` variables.

Precedence: a flag given on the command line, then the environment variable, then the
default. Every flag `--foo-bar` has the variable `DENOISE_SFU_FOO_BAR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from denoiser.paths import WEB_DIR
from denoiser.worker.address import parse_address
from sfu.signalling.links import ice_server_links

ENV_PREFIX = "DENOISE_SFU_"
ENGINES = ("local", "workers")
LIST_OPTIONS = ("ice_servers", "workers")  # repeatable flags, comma-separated variables


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Everything `serve` (and `create_app`) is configured by."""

    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str | None = None
    secret: str = ""
    redis: str | None = None
    engine: str = "local"
    workers: tuple[str, ...] = ()  # HOST:PORT of `denoise-sfu worker`s, with engine=workers
    device: str = "cpu"
    model_lookahead: int | None = None  # hops; None keeps the model's own (default model: 1)
    model_weights: str | None = None  # a checkpoint (path, or a name in models/); None: default
    max_streams: int | None = None  # None: measured at start on CPU (unbatched), 256 on CUDA
    # The CPU rung (issue 17): on a CPU device these weights replace `model_weights` (e.g.
    # "small", models/gtcrn48.pt); CUDA keeps `model_weights`. None: the same model everywhere.
    cpu_model_weights: str | None = None
    web_dir: Path = WEB_DIR
    ice_servers: tuple[str, ...] = ()
    max_sdp_bytes: int = 64 * 1024
    max_sessions_per_room: int = 64
    # Hostile and slow clients (docs/security.md): every limit below is per node.
    header_timeout: float = 10.0  # seconds from a request's first byte to its last header
    body_timeout: float = 10.0  # seconds for a whole request body (SDP, JSON) to arrive
    idle_timeout: float = 30.0  # seconds an idle keep-alive connection stays open
    max_connections: int = 512  # open HTTP connections (WebSockets included)
    max_peer_connections: int = 256  # sessions (WHIP, WHEP, WebSocket): one peer each
    max_sessions_per_identity: int = 16  # sessions of one identity in one room
    max_sessions_per_ip: int = 64  # sessions from one client address
    connect_timeout: float = 30.0
    # -- media limits (issue 14, item 3) --
    receive_queue_frames: int = 50  # decoded 20 ms frames (and packets) one track may queue
    hop_deadline: float = 0.02
    latency_budget: float | None = None
    token_ttl: int = 3600
    node_id: str | None = None  # this node's name in Redis; None: host name + random suffix
    max_rooms: int = 1000  # rooms placement puts on this node (its capacity)
    admin_token: str | None = None  # bearer token of POST /admin/drain; None: signal only
    drain_deadline: float = 3600.0  # a draining node exits when empty, or after this
    log_level: str = "info"
    log_format: str = "json"
    # POST /demo/token hands a token to anyone who names a room: on by default only when the
    # secret was generated for this run (the demo), off whenever a secret is configured.
    demo_tokens: bool | None = None
    secret_generated: bool = field(default=False, compare=False)
    # -- media path (issue 13, fastpath) --
    opus_complexity: int = 10  # libopus complexity of each speaker's encoder, 0-10
    forward_mode_off: bool = True  # mode off sends the publisher's own Opus (no re-encode)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise SettingsError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        for address in self.workers:
            try:
                parse_address(address)
            except ValueError as err:
                raise SettingsError(f"worker address: {err}") from None
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is out of range")
        if not 0 < self.connect_timeout <= 3600:
            raise SettingsError("connect_timeout must be in (0, 3600] seconds")
        if not 1 <= self.receive_queue_frames <= 1000:
            raise SettingsError("receive_queue_frames must be 1-1000")
        if self.max_sdp_bytes < 1024:
            raise SettingsError("max_sdp_bytes must be at least 1024")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise SettingsError(f"{name} must be in (0, 3600] seconds")
        for name in ("max_connections", "max_peer_connections", "max_sessions_per_identity",
                     "max_sessions_per_ip"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1")
        if not 0 < self.hop_deadline <= 5:
            raise SettingsError("hop_deadline must be in (0, 5] seconds")
        if self.max_streams is not None and self.max_streams < 1:
            raise SettingsError("max_streams must be at least 1")
        if self.model_lookahead is not None and self.model_lookahead not in (0, 1, 2):
            raise SettingsError("model_lookahead must be 0, 1 or 2 hops")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://",
                                                                 "unix://")):
            raise SettingsError(f"redis must be a redis:// URL, not {self.redis!r}")
        if self.max_rooms < 1:
            raise SettingsError("max_rooms must be at least 1")
        if self.drain_deadline < 0:
            raise SettingsError("drain_deadline must be >= 0 seconds")
        if self.log_format not in ("json", "text"):
            raise SettingsError("log_format must be json or text")
        if not 0 <= self.opus_complexity <= 10:
            raise SettingsError("opus_complexity must be 0-10")
        try:
            ice_server_links(self.ice_servers)
        except ValueError as err:
            raise SettingsError(str(err)) from None

    @property
    def base_url(self) -> str:
        """The URL clients reach this server at (public_url, else derived from host/port)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def with_secret(self) -> Settings:
        """These settings, with a fresh random secret if none was configured."""
        if self.secret:
            return self
        demo = True if self.demo_tokens is None else self.demo_tokens
        return dataclasses.replace(self, secret=secrets.token_urlsafe(32), secret_generated=True,
                                   demo_tokens=demo)


# (flag, field, type converter, help). The flag is also the env variable name.
_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", int, "port to listen on"),
    ("--public-url", "public_url", str, "URL clients reach this server at"),
    ("--secret", "secret", str, "HMAC secret for room tokens (random if unset)"),
    ("--redis", "redis", str, "Redis URL (redis://HOST:PORT/DB) for placement across nodes: "
     "rooms on nodes, and with --engine workers and no --worker, streams on the workers "
     "registered there"),
    ("--node-id", "node_id", str, "this node's name in Redis (default: host name and a "
     "random suffix)"),
    ("--max-rooms", "max_rooms", int, "rooms placement may put on this node"),
    ("--admin-token", "admin_token", str, "bearer token for POST /admin/drain (unset: drain "
     "with SIGUSR1 only)"),
    ("--drain-deadline", "drain_deadline", float, "seconds a draining node keeps its calls "
     "before it exits anyway"),
    ("--engine", "engine", str, "where denoising runs: local (in-process) or workers"),
    ("--worker", "workers", str, "HOST:PORT of a `denoise-sfu worker` for --engine workers "
     "(repeatable: streams go to the one with the most free slots; comma-separated in the "
     "environment). None named: serve starts one on this machine itself"),
    ("--device", "device", str, "device of the local engine: cpu or cuda"),
    ("--model-lookahead", "model_lookahead", int, "model look-ahead in 10 ms hops: 0, 1 or 2 "
     "(default: the model's own; the default model is trained at 1, 20 ms of algorithmic "
     "latency; others re-target its weights at a measured quality cost)"),
    ("--model-weights", "model_weights", str, "model checkpoint: a .pt path or a name in models/ "
     "(default dfn3_la1.pt, DFN3 fine-tuned for 20 ms; dfn3.pt is the original DFN3, 30 ms)"),
    ("--cpu-model-weights", "cpu_model_weights", str, "the rung to run on a CPU device: a "
     "checkpoint or rung name (small: models/gtcrn48.pt, the CPU rung) used instead of "
     "--model-weights when the device is the CPU; CUDA keeps --model-weights (default: the "
     "same model on every device)"),
    ("--max-streams", "max_streams", int, "streams the engine denoises at once; the others "
     "pass through (counted engine_full) until a slot frees (default: measured at start on "
     "CPU as what one core keeps in real time unbatched; 256 on CUDA)"),
    ("--web-dir", "web_dir", Path, "directory of the demo page served at /"),
    ("--ice-server", "ice_servers", str, "STUN/TURN URL offered to peers (repeatable; "
     "comma-separated in the environment)"),
    ("--max-sdp-bytes", "max_sdp_bytes", int, "largest SDP body accepted"),
    ("--max-sessions-per-room", "max_sessions_per_room", int, "publishers + subscribers per room"),
    ("--connect-timeout", "connect_timeout", float, "seconds a peer (WHIP, WHEP or WebSocket "
     "session, from its join) may take to connect its media before the session is ended"),
    ("--receive-queue-frames", "receive_queue_frames", int, "decoded 20 ms frames (and "
     "undecoded packets) a published track may queue before the oldest is dropped (counted)"),
    ("--header-timeout", "header_timeout", float, "seconds from a request's first byte to the "
     "end of its headers; slower connections are dropped"),
    ("--body-timeout", "body_timeout", float, "seconds a request body (SDP, JSON) may take to "
     "arrive whole (408 after)"),
    ("--idle-timeout", "idle_timeout", float, "seconds an idle HTTP keep-alive connection stays "
     "open"),
    ("--max-connections", "max_connections", int, "open HTTP connections (WebSockets "
     "included); more are answered 503 and closed"),
    ("--max-peer-connections", "max_peer_connections", int, "sessions on this node (WHIP, "
     "WHEP, WebSocket; one peer connection each); more get 429"),
    ("--max-sessions-per-identity", "max_sessions_per_identity", int, "sessions one identity "
     "may hold in a room at once (429 beyond)"),
    ("--max-sessions-per-ip", "max_sessions_per_ip", int, "sessions one client address may "
     "hold at once (429 beyond; behind a proxy every client shares its address)"),
    ("--hop-deadline", "hop_deadline", float, "seconds a hop may wait for the engine before "
     "the original audio goes out instead"),
    ("--latency-budget", "latency_budget", float, "wall seconds from packet in to packet out "
     "after which hops pass through (default 0.020; the model's latency comes on top)"),
    ("--token-ttl", "token_ttl", int, "lifetime of tokens this server issues (seconds)"),
    ("--log-level", "log_level", str, "debug, info, warning or error"),
    ("--log-format", "log_format", str, "json or text"),
    # -- media path (issue 13, fastpath) --
    ("--opus-complexity", "opus_complexity", int, "libopus complexity of each speaker's "
     "encoder, 0-10: lower costs less CPU per speaker for a little quality (measured in "
     "docs/benchmarks.md); mode off forwards the publisher's own Opus and encodes nothing"),
    ("--forward-mode-off", "forward_mode_off", "bool", "mode off sends the publisher's own Opus "
     "payloads as they came (yes, the default: transparent, nearly free) or decodes and "
     "re-encodes them like denoised audio (no: one codec pass more, as before)"),
    ("--demo-tokens", "demo_tokens", "bool", "hand out tokens on POST /demo/token: yes or no "
     "(default: yes only when no secret is configured)"),
)


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected yes or no, not {raw!r}")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every settings flag; defaults are None so that the environment can fill them."""
    for flag, dest, conv, help_text in _OPTIONS:
        kwargs: dict[str, Any] = {"dest": dest, "default": None,
                                  "help": f"{help_text} [{env_name(flag)}]"}
        if dest in LIST_OPTIONS:
            kwargs["action"] = "append"
        elif conv == "bool":
            kwargs["type"] = parse_bool
            kwargs["metavar"] = "yes|no"
        elif dest == "engine":
            kwargs["choices"] = ENGINES
        else:
            kwargs["type"] = conv
        parser.add_argument(flag, **kwargs)


def from_sources(args: argparse.Namespace | None = None,
                 env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from parsed flags (if any) over `env` (default: os.environ)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for flag, dest, conv, _ in _OPTIONS:
        given = getattr(args, dest, None) if args is not None else None
        if given is not None:
            values[dest] = tuple(given) if dest in LIST_OPTIONS else given
            continue
        raw = env.get(env_name(flag))
        if raw is None or raw == "":
            continue
        try:
            if dest in LIST_OPTIONS:
                values[dest] = tuple(u.strip() for u in raw.split(",") if u.strip())
            elif conv == "bool":
                values[dest] = parse_bool(raw)
            else:
                values[dest] = conv(raw)
        except ValueError as err:
            raise SettingsError(f"{env_name(flag)}={raw!r}: {err}") from err
    return Settings(**values)
