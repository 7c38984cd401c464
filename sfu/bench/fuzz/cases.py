"""What every target shares: a case reproducible from (seed, target, index), its outcome, and
the environment the targets aim at (the live system, tokens, template offers, media ports).

A case's random generator is seeded by its own (seed, target, index), never by what ran before
it, so `--seed S --targets T --case K` replays exactly case K of target T.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from sfu.auth import issue_token
from sfu.bench.fuzz.system import LiveSystem

REPR_LIMIT = 1200
TOKEN_TTL = 3600  # seconds; the targets' valid tokens
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass
class Case:
    target: str
    seed: int
    index: int
    what: str = ""  # the mutation, in words
    payload: bytes | str = b""  # what was sent (the main part)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}/{self.target}/{self.index}")

    def replay(self) -> str:
        return (f"denoise-sfu bench fuzz --seed {self.seed} --targets {self.target} "
                f"--case {self.index}")

    def payload_repr(self, limit: int = REPR_LIMIT) -> str:
        text = repr(self.payload)
        if len(text) > limit:
            text = f"{text[:limit]}... ({len(self.payload)} {type(self.payload).__name__} long)"
        return text


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)  # HTTP statuses (or WS codes) answered
    server_error: str | None = None  # a 5xx, an internal_error message: a finding
    expectation: str | None = None  # a valid input refused (e.g. a split offer): a finding
    note: str = ""
    created: int = 0  # sessions the server created (and the target deleted)


@dataclass
class FuzzEnv:
    """What the targets aim at; built once by the runner."""

    system: LiveSystem
    room: str  # the live call's room
    publisher: str  # the live call's publisher identity
    whip_offer: str  # a real aiortc sendonly audio offer
    whep_offer: str  # a real aiortc recvonly audio offer
    media_targets: list[tuple[str, int]]
    semaphore: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    _tokens: dict[tuple[str, str, tuple[str, ...]], tuple[float, str]] = field(
        default_factory=dict)

    def token(self, room: str, identity: str, *grants: str) -> str:
        """A valid token for `identity` in `room` with `grants` (default both): cached, and
        issued anew once half its lifetime has passed, so that runs longer than a token's
        lifetime do not see their valid inputs refused as expired."""
        key = (room, identity, grants or ("publish", "subscribe"))
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is None or now - cached[0] > TOKEN_TTL / 2:
            cached = (now, issue_token(self.system.secret, room, identity, TOKEN_TTL, key[2]))
            self._tokens[key] = cached
        return cached[1]

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.system.session

    def url(self, path: str) -> str:
        return self.system.url(path)


class Target(Protocol):
    name: str

    async def run(self, case: Case, env: FuzzEnv) -> Outcome: ...


def judge_status(outcome: Outcome, status: int, body: str, where: str) -> None:
    """Record `status`; a 5xx is a finding."""
    outcome.statuses.append(status)
    if (status >= 500 and status != 503) or (status == 503 and "internal" in body):
        outcome.server_error = f"{where} answered {status}: {body[:300]}"


async def post_sdp(env: FuzzEnv, outcome: Outcome, path: str, token: str | None,
                   body: bytes, content_type: str = "application/sdp",
                   extra: dict[str, str] | None = None) -> tuple[int, str]:
    """POST an SDP body with aiohttp; a 201 is DELETEd at once (counted in `created`)."""
    headers = {"Content-Type": content_type, **(extra or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with env.session.post(env.url(path), data=body, headers=headers,
                                timeout=HTTP_TIMEOUT) as resp:
        text = await resp.text(errors="replace")
        status, location = resp.status, resp.headers.get("Location")
    judge_status(outcome, status, text, f"POST {path}")
    if status == 201 and location:
        outcome.created += 1
        await delete_session(env, outcome, location, token)
    return status, text


async def delete_session(env: FuzzEnv, outcome: Outcome, location: str,
                         token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with env.session.delete(env.url(location), headers=headers,
                                  timeout=HTTP_TIMEOUT) as resp:
        judge_status(outcome, resp.status, await resp.text(errors="replace"),
                     f"DELETE {location}")


def pick(rng: random.Random, options: list[Any] | tuple[Any, ...]) -> Any:
    return options[rng.randrange(len(options))]


BAD_BYTES = (b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\r", b"\n", b"\r\n\r\n",
             b"\x7f", b"%00", b"\xe2\x80\xae", b"\xf0\x9f\x92\xa9", b"\t", b" ")
HUGE_NUMBERS = ("4294967296", "18446744073709551616", "-1", "99999999999999999999999999999",
                "0", "65536", "2147483648", "1e308", "NaN", "-0", "0x10", "340282366920938"
                "463463374607431768211456")


def mutate_bytes(rng: random.Random, data: bytes, rounds: int = 3) -> bytes:
    """Generic byte mutations: flip, insert bad bytes, delete, repeat or truncate spans."""
    out = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        if not out:
            out += rng.randbytes(rng.randint(1, 64))
            continue
        op = rng.randrange(6)
        pos = rng.randrange(len(out))
        if op == 0:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = pick(rng, BAD_BYTES)
        elif op == 2:
            del out[pos:pos + rng.randint(1, 32)]
        elif op == 3:
            span = bytes(out[pos:pos + rng.randint(1, 64)])
            out[pos:pos] = span * rng.randint(2, 50)
        elif op == 4:
            del out[pos:]
        else:
            out[pos:pos] = rng.randbytes(rng.randint(1, 32))
    return bytes(out)
