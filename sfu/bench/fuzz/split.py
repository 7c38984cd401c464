"""Target `split`: bodies and heads that arrive in pieces, as on a real network. A whole valid
offer sent in 2-6 segments with pauses must be answered 201 like one sent at once (a refusal is
an `expectation` finding: issue 14 item 1); a truncated body (Content-Length promises more,
then the client stops, half-closes or hangs up) must get a 4xx or nothing, never a 5xx."""

from __future__ import annotations

import itertools
import random
import re

from sfu.bench.fuzz.cases import Case, FuzzEnv, Outcome, delete_session, pick
from sfu.bench.fuzz.rawhttp import brief, exchange, request

LOCATION_RE = re.compile(rb"\r\nLocation: ([^\r\n]+)", re.I)


def _cuts(rng: random.Random, size: int, pieces: int) -> list[int]:
    return sorted(rng.sample(range(1, size), min(pieces - 1, size - 1)))


def _segments(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class SplitTarget:
    name = "split"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        room = f"fzs{case.index % 53}"
        token = env.token(room, f"q{case.index % 64}", "publish")
        whep = rng.random() < 0.3
        path = f"/whep/{env.room}/{env.publisher}" if whep else f"/whip/{room}"
        if whep:
            token = env.token(env.room, f"q{case.index % 64}", "subscribe")
        offer = (env.whep_offer if whep else env.whip_offer).encode()
        headers = [("Host", "127.0.0.1"), ("Authorization", f"Bearer {token}"),
                   ("Content-Type", "application/sdp"), ("Connection", "close")]
        mode = pick(rng, ("whole", "whole", "whole", "truncated", "truncated_eof", "head_split",
                          "chunked"))
        if mode == "chunked":
            chunks = _segments(offer, _cuts(rng, len(offer), rng.randint(2, 5)))
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            raw = request("POST", path, [*headers, ("Transfer-Encoding", "chunked")], body)
        else:
            raw = request("POST", path, [*headers, ("Content-Length", str(len(offer)))], offer)
        head_end = raw.index(b"\r\n\r\n") + 4
        pieces = rng.randint(2, 6)
        pauses = [rng.choice((0.02, 0.05, 0.1, 0.2, 0.3)) for _ in range(pieces)]
        if mode == "head_split":
            cuts = _cuts(rng, head_end, pieces)
        else:
            cuts = sorted({head_end, *(head_end + c for c in _cuts(rng, len(offer), pieces))})
        segments = _segments(raw, cuts)
        half_close = False
        if mode.startswith("truncated"):
            keep = rng.randint(1, len(segments) - 1)
            segments = segments[:keep]
            half_close = mode == "truncated_eof"
        case.what = f"POST {path} {mode} in {len(segments)} segments, pauses {pauses}"
        case.payload = b"|".join(segments)
        read_timeout = 2.0 if mode.startswith("truncated") else 10.0
        status, head = await exchange(env.system.host, env.system.port, segments, pauses,
                                      read_timeout, half_close)
        outcome = Outcome(note=head[:160].decode("latin-1") if status else "no_answer")
        if status is not None:
            outcome.statuses.append(status)
            if status >= 500 and status != 503:
                outcome.server_error = f"{case.what} answered {status}: " \
                                       f"{brief(head)}"
        if status == 201:
            outcome.created += 1
            location = LOCATION_RE.search(head)
            if location:
                await delete_session(env, outcome, location.group(1).decode(), token)
        elif not mode.startswith("truncated") and status != 503:
            outcome.expectation = (f"a valid offer sent {mode} in {len(segments)} segments was "
                                   f"answered {status}: {brief(head)}")
        return outcome
