"""Target `http`: request lines and headers over a raw socket (bad methods, paths with NUL or
over 255 bytes, long URIs, bad versions, huge or many headers, conflicting Content-Length,
broken chunked and `Content-Encoding: gzip` bodies, bogus WebSocket upgrades). A 5xx status is
a finding; no answer within the read timeout is counted as `no_answer`."""

from __future__ import annotations

import gzip
import random

from sfu.bench.fuzz.cases import Case, FuzzEnv, Outcome, mutate_bytes, pick
from sfu.bench.fuzz.rawhttp import brief, exchange, request

METHODS = ("GET", "POST", "DELETE", "PATCH", "OPTIONS", "PUT", "HEAD", "TRACE", "CONNECT",
           "get", "G\x00T", "POST" * 60, "PRI", "M-SEARCH", "")
VERSIONS = ("HTTP/1.1", "HTTP/1.0", "HTTP/1.1", "HTTP/9.9", "HTTP/1.1x", "", "HTTP/0.9", "http/1.1")


def _paths(env: FuzzEnv) -> tuple[str, ...]:
    return ("/", "/healthz", "/metrics", "/readyz", "/whip/fzh", f"/whep/{env.room}/x",
            f"/whep/{env.room}/{env.publisher}", "/whip/fzh/abc", "/whep/a/b/c", "/%00",
            "/a\x00b", "/" + "a" * 300, "/" + "a/" * 200, "/../../etc/passwd",
            "/index.html%00.js", "/%2e%2e/%2e%2e/etc/passwd", "/ws?room=" + "%ff" * 10,
            "/whip/" + "r" * 5000, "*", "http://example.invalid/x", "/?" + "q" * 10_000,
            "/\udcff\udcfe", "//", "/metrics?x=\x01", "/demo/token", "/admin/drain",
            "/" + "é" * 100, "/ws", "/whip/fzh?mode=" + "o" * 3000, "/whip/fzh?mode=%00",
            "/whep/" + "a" * 64 + "/" + "b" * 300, "/app.js", "/index.html/")


def _headers(rng: random.Random, env: FuzzEnv, body: bytes) -> list[tuple[str, str] | bytes]:
    token = env.token("fzh", f"h{rng.randrange(64)}")
    headers: list[tuple[str, str] | bytes] = [("Host", "127.0.0.1"), ("Connection", "close")]
    if rng.random() < 0.6:
        headers.append(("Authorization", f"Bearer {token}"))
    if rng.random() < 0.6:
        headers.append(("Content-Type", pick(rng, ("application/sdp", "application/json",
                                                    "application/sdp; charset=utf-8",
                                                    "multipart/form-data; boundary=x",
                                                    "application/x-www-form-urlencoded", ""))))
    length = len(body)
    for _ in range(rng.randint(0, 3)):
        op = rng.randrange(14)
        if op == 0:
            headers.append(("X-Big", "b" * rng.choice((8000, 9000, 70_000))))
        elif op == 1:
            headers += [(f"X-{i}", "v") for i in range(rng.choice((101, 200, 1000)))]
        elif op == 2:
            headers.append(b"NoColonHere")
        elif op == 3:
            headers.append(pick(rng, (b"Bad Name: x", b"X-\x00: y", b"X-\xff: \xfe", b": empty",
                                      b" leading: space", b"X-Fold: a\r\n continued")))
        elif op == 4:
            headers.append(("Content-Length", pick(rng, ("-1", "abc", "99999999999",
                                                         str(length + 10), "0", "1e3",
                                                         f"{length}, {length}"))))
            length = -1
        elif op == 5:
            headers += [("Content-Length", str(length)), ("Content-Length", str(length + 1))]
            length = -1
        elif op == 6:
            headers.append(("Transfer-Encoding", pick(rng, ("chunked", "gzip, chunked",
                                                             "identity", "chunked, chunked",
                                                             "x" * 100))))
        elif op == 7:
            headers.append(("Content-Encoding", pick(rng, ("gzip", "deflate", "br", "zstd",
                                                            "gzip, gzip", "x"))))
        elif op == 8:
            headers.append(("Expect", pick(rng, ("100-continue", "200-ok", "x"))))
        elif op == 9:
            headers += [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", pick(rng, ("x", "", "dGhlIHNhbXBsZSBub25jZQ==",
                                                         "=" * 40))),
                        ("Sec-WebSocket-Version", pick(rng, ("13", "8", "x", "")))]
        elif op == 10:
            headers.append(("Authorization", pick(rng, ("Bearer", "Basic Zm9vOmJhcg==",
                                                        "Bearer " + "x" * 5000,
                                                        "Bearer \udcff", "bearer  " + token))))
        elif op == 11:
            headers.append(("If-Match", pick(rng, ("*", '"x"', "\"" * 100))))
        elif op == 12:
            headers.append(("Range", "bytes=" + pick(rng, ("0-", "-1", "9-1", "x",
                                                           "0-0,1-1" * 500))))
        else:
            headers.append(("Accept-Encoding", "gzip;q=" + "9" * 400))
    if length >= 0 and not any(isinstance(h, tuple) and h[0] == "Transfer-Encoding"
                               for h in headers):
        headers.append(("Content-Length", str(length)))
    return headers


def _body(rng: random.Random, env: FuzzEnv) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return b""
    if op == 1:
        return env.whip_offer.encode()
    if op == 2:
        return mutate_bytes(rng, gzip.compress(env.whip_offer.encode()))  # a broken gzip body
    if op == 3:
        return b"1f\r\nnot really\r\nzz\r\n" + rng.randbytes(20)  # a broken chunked body
    if op == 4:
        return gzip.compress(b"{" * 5000)
    return rng.randbytes(rng.randint(1, 5000))


class HttpTarget:
    name = "http"

    async def run(self, case: Case, env: FuzzEnv) -> Outcome:
        rng = case.rng
        body = _body(rng, env)
        method, path, version = pick(rng, METHODS), pick(rng, _paths(env)), pick(rng, VERSIONS)
        if rng.random() < 0.3:
            method = pick(rng, ("POST", "GET"))
        raw = request(method, path, _headers(rng, env, body), body, version)
        if rng.random() < 0.1:
            raw = mutate_bytes(rng, raw)
        case.what, case.payload = f"{method[:20]} {path[:60]!r} {version}", raw
        status, head = await exchange(env.system.host, env.system.port, [raw], [])
        outcome = Outcome(note=head[:200].decode("latin-1"))
        if status is None:
            outcome.note = "no_answer"
        else:
            outcome.statuses.append(status)
            if status >= 500 and status != 503:
                outcome.server_error = (f"{case.what} answered {status}: "
                                        f"{brief(head)}")
        return outcome
