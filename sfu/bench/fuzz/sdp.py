"""Target `sdp`: mutated real offers (line drops, duplications, swaps, huge values, bad bytes,
extra or foreign m-lines, `sendrecv` subscribers) posted to WHIP and to WHEP (subscribing to
the live call's publisher). Any 5xx is a finding; a 201 is deleted at once."""

from __future__ import annotations

import random
import re

from sfu.bench.fuzz.cases import (
    BAD_BYTES,
    HUGE_NUMBERS,
    Case,
    FuzzEnv,
    Outcome,
    mutate_bytes,
    pick,
    post_sdp,
)

DIRECTIONS = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv\r\na=sendonly")


def _lines(sdp: str) -> list[str]:
    return sdp.replace("\r\n", "\n").strip("\n").split("\n")


def _media_section(lines: list[str]) -> list[str]:
    start = next((i for i, line in enumerate(lines) if line.startswith("m=")), len(lines))
    return lines[start:]


def mutate_sdp(rng: random.Random, sdp: str) -> tuple[str, bytes]:
    """(what was done, the mutated offer) from a valid offer."""
    lines = _lines(sdp)
    done: list[str] = []
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(12)
        i = rng.randrange(len(lines))
        if op == 0:
            done.append(f"drop line {i} {lines[i][:30]!r}")
            del lines[i]
        elif op == 1:
            n = rng.choice((2, 3, 50, 500))
            done.append(f"duplicate line {i} x{n}")
            lines[i:i + 1] = [lines[i]] * n
        elif op == 2:
            j = rng.randrange(len(lines))
            done.append(f"swap lines {i},{j}")
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            huge = pick(rng, HUGE_NUMBERS)
            done.append(f"numbers of line {i} -> {huge}")
            lines[i] = re.sub(r"\d+", huge, lines[i], count=rng.randint(1, 3))
        elif op == 4:
            size = rng.choice((300, 5000, 40_000, 70_000))
            done.append(f"line {i} grows by {size}")
            lines[i] += "x" * size
        elif op == 5:
            direction = pick(rng, DIRECTIONS)
            done.append(f"direction -> {direction!r}")
            lines = [direction if re.fullmatch(r"a=(sendrecv|sendonly|recvonly|inactive)", x)
                     else x for x in lines]
        elif op == 6:
            media = _media_section(lines)
            kind = pick(rng, ("audio", "video", "application", "audio", "text"))
            copies = rng.choice((1, 2, 10))
            done.append(f"{copies} extra m={kind} sections")
            for c in range(copies):
                extra = [x for x in media]
                if extra:
                    extra[0] = re.sub(r"^m=\w+", f"m={kind}", extra[0])
                    extra = [re.sub(r"^a=mid:.*", f"a=mid:x{c}", x) for x in extra]
                lines += extra
        elif op == 7:
            done.append(f"truncate at line {i}")
            lines = lines[:i]
        elif op == 8:
            attr = pick(rng, ("a=fingerprint:sha-256 ZZ", "a=ice-ufrag:", "a=ice-pwd:" + "p" * 300,
                              "a=setup:actpass", "a=setup:bogus", "a=rtpmap:111 opus/0/0",
                              "a=rtpmap:200 opus/48000/2", "a=fmtp:111 " + "x=1;" * 2000,
                              "a=ssrc:1 cname:" + "c" * 4000, "a=rtcp-mux", "a=extmap:15 urn:x",
                              "a=extmap:0 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                              "a=candidate:1 1 udp 1 1.2.3.4 9 typ host", "a=group:BUNDLE x y z",
                              "a=msid:" + "m" * 5000, "c=IN IP6 ::1", "m=audio 0 RTP/AVP 0",
                              "a=mid:", "a=rtcp:99999 IN IP4 0.0.0.0", "b=AS:99999999999"))
            at = rng.randrange(len(lines) + 1)
            done.append(f"insert {attr[:40]!r} at {at}")
            lines.insert(at, attr)
        elif op == 9:
            done.append("LF line ends")
            return "; ".join(done), "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
        elif op == 10:
            pos = rng.randrange(len(lines[i]) + 1)
            bad = pick(rng, BAD_BYTES)
            done.append(f"bad bytes {bad!r} in line {i}")
            raw = lines[i].encode()
            lines[i] = (raw[:pos] + bad + raw[pos:]).decode("utf-8", "surrogateescape")
        else:
            done.append("byte mutations")
            body = ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
            return "; ".join(done), mutate_bytes(rng, body)
    body = ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
    return "; ".join(done), body


class SdpTarget:
    name = "sdp"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        outcome = Outcome()
        if rng.random() < 0.5:
            room = f"fz{case.index % 97}"
            path, offer = f"/whip/{room}", env.whip_offer
            token = env.token(room, f"p{case.index % 64}", "publish")
        else:
            path = f"/whep/{env.room}/{env.publisher}"
            token, offer = env.token(env.room, f"s{case.index % 64}", "subscribe"), env.whep_offer
            if rng.random() < 0.3:  # a subscriber offer built from a publisher's (sendonly)
                offer = env.whip_offer
        what, body = mutate_sdp(rng, offer)
        case.what, case.payload = f"POST {path}: {what}", body
        status, text = await post_sdp(env, outcome, path, token, body)
        outcome.note = f"{status} {text[:120]}"
        return outcome
