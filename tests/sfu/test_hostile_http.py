"""Hostile and unlucky HTTP clients against a live node (issue 14, items 1, 2, 4, 5).

Every test starts the node the way `serve` runs it (`GuardedRunner`, real TCP on the interface
address), talks to it over raw sockets where aiohttp's client would be too polite, and checks
the answer is a clean 4xx with the JSON error body, that the drop is counted, and that no
server peer connection or session slot is left behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import gzip
import json
import warnings
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from denoiser.engine import Engine
from sfu.app import create_app
from sfu.bench.harness import ToneTrack, wait_for
from sfu.context import CONTEXT, SfuContext
from sfu.http_guard import GuardedRunner
from sfu.limits import LIMITS
from sfu.settings import Settings
from support.peers import make_offer
from support.rawhttp import build_request, closed_within, read_response, send_in_pieces
from support.sfu import TEST_SECRET


@dataclass
class Node:
    app: web.Application
    host: str
    port: int
    session: aiohttp.ClientSession

    @property
    def ctx(self) -> SfuContext:
        return self.app[CONTEXT]

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value("denoise_sfu_" + name, labels)
        return value or 0.0

    async def post(self, path: str, body: bytes | str, token: str | None = None,
                   content_type: str = "application/sdp",
                   headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        hdrs = {"Content-Type": content_type, **(headers or {})}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.post(self.url(path), data=body, headers=hdrs) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(host_ip: str, gain_engine: Engine) -> AsyncIterator[NodeFactory]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: object) -> Node:
        settings = dataclasses.replace(Settings(secret=TEST_SECRET, host=host_ip, port=0),
                                       **overrides)
        app = create_app(settings, engine=gain_engine)
        runner = GuardedRunner(app, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, host_ip, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        # One connection per request: a refused body may leave the connection unusable.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        sessions.append(session)
        return Node(app, host_ip, port, session)

    yield start
    for session in sessions:
        await session.close()
    for runner in reversed(runners):
        await runner.cleanup()


def live_server_peers(exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """Peer connections in this process that are not closed (the tests' own excluded)."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on every object pokes deprecated modules
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, RTCPeerConnection)
                   and id(obj) not in exclude and obj.connectionState != "closed")


def json_error(body: bytes) -> dict:
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"} and parsed["message"], parsed
    return parsed


# -- item 1: a body in more than one TCP segment ------------------------------------------

async def test_offer_split_across_segments_gets_a_real_answer(
        start_node: NodeFactory, make_token: Callable[..., str]) -> None:
    """Failed before: 400 bad_sdp (`content.read(n)` returned the first segment only)."""
    node = await start_node()
    client = RTCPeerConnection()
    client.addTrack(ToneTrack())
    try:
        await client.setLocalDescription(await client.createOffer())
        sdp = client.localDescription.sdp.encode()
        request = build_request("POST", "/whip/r1", sdp, {
            "Authorization": f"Bearer {make_token('r1', 'alice')}",
            "Content-Type": "application/sdp"})
        cut = len(request) - len(sdp) // 2
        pieces = [request[:cut], request[cut:]]
        resp = await send_in_pieces(node.host, node.port, pieces, pause=0.2)
        assert resp.status == 201, resp.body
        assert resp.headers["content-type"] == "application/sdp"
        await client.setRemoteDescription(RTCSessionDescription(resp.body.decode(), "answer"))
        await wait_for(lambda: client.connectionState == "connected", "the peer to connect")
        # Headers split too, three pieces: the body still arrives whole.
        listener = await make_offer("recvonly")
        body = listener.encode()
        request = build_request("POST", "/whep/r1/alice", body, {
            "Authorization": f"Bearer {make_token('r1', 'bob')}",
            "Content-Type": "application/sdp"})
        head = request.index(b"\r\n") + 5
        pieces = [request[:head], request[head:-len(body) + 100], request[-len(body) + 100:]]
        resp = await send_in_pieces(node.host, node.port, pieces, pause=0.2)
        assert resp.status == 201, resp.body
    finally:
        await client.close()


async def test_client_that_vanishes_mid_body_is_not_a_server_error(
        start_node: NodeFactory, make_token: Callable[..., str]) -> None:
    """Failed before: the lost connection (ConnectionResetError) escaped as a 500, logged as an
    unhandled error and counted as a server error; found by `bench fuzz --targets split`."""
    node = await start_node()
    offer = (await make_offer("sendonly")).encode()
    request = build_request("POST", "/whip/r1", offer, {
        "Authorization": f"Bearer {make_token('r1', 'alice')}",
        "Content-Type": "application/sdp"})
    for _ in range(3):
        _reader, writer = await node.open()
        writer.write(request[: len(request) - len(offer) // 2])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()  # gone, mid-body
    await wait_for(lambda: node.metric("http_bodies_refused_total", reason="incomplete") >= 3,
                   "the lost bodies to be counted")
    assert node.metric("http_requests_total", route="/whip/{room}", method="POST",
                       status="500") == 0


async def test_body_that_never_ends_is_408(start_node: NodeFactory,
                                          make_token: Callable[..., str]) -> None:
    node = await start_node(body_timeout=0.5)
    sdp = (await make_offer("sendonly")).encode()
    request = build_request("POST", "/whip/r1", sdp, {
        "Authorization": f"Bearer {make_token('r1', 'alice')}",
        "Content-Type": "application/sdp"})
    reader, writer = await node.open()
    writer.write(request[:-100])  # the last 100 bytes never come
    resp = await read_response(reader, timeout=5)
    writer.close()
    assert resp.status == 408 and json_error(resp.body)["error"] == "body_timeout"
    assert node.metric("http_bodies_refused_total", reason="timeout") == 1
    assert live_server_peers() == 0


async def test_oversized_bodies_are_413(start_node: NodeFactory,
                                        make_token: Callable[..., str]) -> None:
    node = await start_node(max_sdp_bytes=4096)
    token = make_token("r1", "alice")
    offer = await make_offer("sendonly")
    big = offer + "a=x-pad:" + "p" * 5000 + "\r\n"
    status, body, _ = await node.post("/whip/r1", big, token)
    assert status == 413 and json_error(body)["error"] == "sdp_too_large"
    # Chunked (no Content-Length): counted as it arrives.
    chunked = build_request("POST", "/whip/r1", b"", {
        "Authorization": f"Bearer {token}", "Content-Type": "application/sdp",
        "Transfer-Encoding": "chunked"})
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"a" * 1000) for _ in range(6)) + b"0\r\n\r\n"
    resp = await send_in_pieces(node.host, node.port, [chunked, chunks])
    assert resp.status == 413 and json_error(resp.body)["error"] == "sdp_too_large"
    # A small gzip that inflates past the limit.
    bomb = gzip.compress(big.encode() * 20)
    status, body, _ = await node.post("/whip/r1", bomb, token,
                                      headers={"Content-Encoding": "gzip"})
    assert status == 413, body
    assert node.metric("http_bodies_refused_total", reason="too_large") == 3


async def test_content_encoding_and_charset(start_node: NodeFactory,
                                            make_token: Callable[..., str]) -> None:
    """Failed before: a broken gzip body was a 500."""
    node = await start_node()
    token = make_token("r1", "alice")
    offer = await make_offer("sendonly")
    status, body, _ = await node.post("/whip/r1", b"\x1f\x8b\x08garbage" * 10, token,
                                      headers={"Content-Encoding": "gzip"})
    assert status == 400 and json_error(body)["error"] == "bad_encoding"
    status, body, _ = await node.post("/whip/r1", zlib.compress(offer.encode())[:-9], token,
                                      headers={"Content-Encoding": "deflate"})
    assert status == 400 and json_error(body)["error"] in ("bad_encoding", "bad_sdp"), body
    status, body, _ = await node.post("/whip/r1", offer, token,
                                      headers={"Content-Encoding": "compress"})
    assert status == 415 and json_error(body)["error"] == "unsupported_encoding"
    for encoding in ("zstd", "br"):  # aiohttp tries these itself (and fails: not encoded)
        status, body, _ = await node.post("/whip/r1", offer, token,
                                          headers={"Content-Encoding": encoding})
        assert 400 <= status < 500 and json_error(body), (encoding, body)
    status, body, _ = await node.post("/whip/r1", offer, token,
                                      content_type="application/sdp; charset=latin-99")
    assert status == 415 and json_error(body)["error"] == "unsupported_charset"
    status, body, _ = await node.post("/whip/r1", offer.encode()[:40] + b"\xff\xfe"
                                      + offer.encode()[40:], token)
    assert status == 400 and json_error(body)["error"] == "bad_sdp"
    status, body, _ = await node.post("/whip/r1", gzip.compress(offer.encode()), token,
                                      headers={"Content-Encoding": "gzip"})
    assert status == 201, body  # a valid gzip body is read like any other
    assert live_server_peers() == 1


# -- item 2: bad input is a 4xx, and nothing is left open ------------------------------------

def _lines(sdp: str) -> list[str]:
    return sdp.split("\r\n")


def _without(sdp: str, prefix: str) -> str:
    return "\r\n".join(line for line in _lines(sdp) if not line.startswith(prefix))


def _media(sdp: str) -> str:
    lines = _lines(sdp)
    first = next(i for i, line in enumerate(lines) if line.startswith("m="))
    return "\r\n".join(lines[first:])


FINGERPRINT = ":".join(["AB"] * 32)
MUTATIONS: dict[str, Callable[[str], str | bytes]] = {
    "no_m_line": lambda s: _without(s, "m="),
    "m_line_only": lambda s: "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9\r\n",
    "no_ice_ufrag": lambda s: _without(s, "a=ice-ufrag"),
    "no_ice_pwd": lambda s: _without(s, "a=ice-pwd"),
    "no_setup": lambda s: _without(s, "a=setup"),
    "bad_setup": lambda s: s.replace("a=setup:actpass", "a=setup:sideways"),
    "bad_fingerprint": lambda s: s.replace("a=fingerprint:sha-256 ", "a=fingerprint:md7 zz"),
    "video_only": lambda s: s.replace("m=audio", "m=video"),
    "duplicate_mids": lambda s: s + _media(s),
    "bad_rtpmap": lambda s: s.replace("a=rtpmap:96", "a=rtpmap:abc"),
    "bad_ssrc": lambda s: s.replace("a=ssrc:", "a=ssrc:x"),
    "bad_extmap": lambda s: s.replace("a=extmap:1", "a=extmap:x"),
    "bad_candidate": lambda s: s.replace("a=ice-ufrag", "a=candidate:1 1 udp x y z\r\na=ice-ufrag"),
    "no_rtcp_mux": lambda s: _without(s, "a=rtcp-mux"),
    "datachannel_only": lambda s: (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
        "a=sctp-port:5000\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
        f"a=fingerprint:sha-256 {FINGERPRINT}\r\na=setup:actpass\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"),
    "huge_line": lambda s: s.replace("a=mid:0", "a=mid:" + "x" * 30000),
    "non_utf8": lambda s: s.encode()[:60] + b"\xc3\x28\xff" + s.encode()[60:],
    "nul_bytes": lambda s: s.replace("s=-", "s=\x00\x00"),
    "not_sdp": lambda s: "{\"sdp\": 1}",
    "empty": lambda s: "",
}


@pytest.mark.parametrize("kind", ["whip", "whep"])
async def test_bad_sdp_is_4xx_and_closes_its_peer(start_node: NodeFactory,
                                                  make_token: Callable[..., str],
                                                  kind: str) -> None:
    """Failed before: a WHEP offer aiortc refuses was a 500 (`sender` used before bound) and
    its peer connection stayed open; several WHIP offers were 500s (AttributeError)."""
    node = await start_node(max_sdp_bytes=64 * 1024)
    status, _, _ = await node.post("/whip/r1", await make_offer("sendonly"),
                                   make_token("r1", "alice"))
    assert status == 201
    baseline = live_server_peers()
    direction = "sendonly" if kind == "whip" else "recvonly"
    offer = await make_offer(direction)
    path, token = (("/whip/r1", make_token("r1", "carol")) if kind == "whip"
                   else ("/whep/r1/alice", make_token("r1", "bob")))
    accepted = []
    for name, mutate in MUTATIONS.items():
        status, body, _ = await node.post(path, mutate(offer), token)
        assert status < 500, (name, body)
        if status == 201:  # aiortc takes it; the peer just never connects (deadline)
            accepted.append(name)
            continue
        assert 400 <= status < 500 and json_error(body), (name, status, body)
    # Nothing refused left a peer behind: each live server peer is a session holding a slot
    # (what aiortc took and answered; it never connects, and its deadline will close it).
    assert live_server_peers() - baseline <= len(accepted), accepted
    assert node.app[LIMITS].active == live_server_peers(), accepted
    assert node.metric("http_requests_total", route=path.replace("r1", "{room}").replace(
        "alice", "{identity}"), method="POST", status="500") == 0


async def test_bad_sdp_over_the_room_socket_is_bad_sdp_not_internal_error(
        start_node: NodeFactory, make_token: Callable[..., str]) -> None:
    """Failed before: the room socket caught only some of aiortc's exceptions, so offers
    without `a=setup` or with duplicate mids (AttributeError) were answered `internal_error`;
    and no refusal was counted."""
    node = await start_node(max_sdp_bytes=64 * 1024)
    offer = await make_offer("sendonly")
    for index, (name, mutate) in enumerate(MUTATIONS.items()):
        if not isinstance(mutate(offer), str):  # bytes: a JSON message carries text only
            continue
        async with node.session.ws_connect(node.url("/ws")) as ws:
            await ws.send_json({"type": "join", "token": make_token("r1", f"p{index}")})
            assert (await ws.receive_json(timeout=5))["type"] == "joined"
            await ws.send_json({"type": "offer", "sdp": mutate(offer)})
            while True:
                reply = await ws.receive_json(timeout=10)
                if reply["type"] in ("error", "answer"):
                    break
            assert reply.get("code") != "internal_error", (name, reply)
            await ws.send_json({"type": "leave"})
    assert node.metric("ws_messages_refused_total", code="internal_error") == 0
    assert node.metric("ws_messages_refused_total", code="bad_sdp") >= 2


async def test_static_paths_the_os_refuses_are_404(start_node: NodeFactory) -> None:
    """Failed before: a NUL byte (ValueError) or a name over 255 bytes (OSError) was a 500."""
    node = await start_node()
    for path in ("/%00", "/a%00b.js", "/" + "a" * 300, "/" + "b/" * 600, "/%2e%2e/etc/passwd",
                 "/..%2f..%2fsetup.py", "/%c3%28", "/" + "%ff" * 100):
        async with node.session.get(node.url(path)) as resp:
            assert resp.status == 404, path
            assert json_error(await resp.read())["error"] == "not_found"
    async with node.session.get(node.url("/")) as resp:
        assert resp.status == 200


async def test_json_bodies_are_bounded(start_node: NodeFactory) -> None:
    node = await start_node(demo_tokens=True)
    cases = [
        (b'{"room": "demo", "name": "ada"}', "application/json; charset=bogus", {}, 415),
        (b'{"room": "demo", "name": "\xff"}', "application/json", {}, 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", {}, 400),
        (b'{"room": ' + b"[" * 20 + b"1" + b"]" * 20 + b"}", "application/json", {}, 400),
        (b"\x1f\x8b\x08broken", "application/json", {"Content-Encoding": "gzip"}, 400),
        (b'{"room": "demo"', "application/json", {}, 400),
        (b'{"room": "demo", "name": "' + b"n" * 20000 + b'"}', "application/json", {}, 413),
        (b'{"room": "demo", "name": "ada"}', "text/plain", {}, 415),
    ]
    for body, content_type, headers, expected in cases:
        status, answer, _ = await node.post("/demo/token", body, content_type=content_type,
                                            headers=headers)
        assert status == expected, (body[:40], answer)
        json_error(answer)
    status, answer, _ = await node.post("/demo/token", b'{"room": "demo", "name": "ada"}',
                                        content_type="application/json")
    assert status == 200 and json.loads(answer)["room"] == "demo"


async def test_tokens_and_headers_never_500(start_node: NodeFactory,
                                            make_token: Callable[..., str]) -> None:
    node = await start_node(admin_token="admin-secret-0123456789")
    offer = await make_offer("sendonly")
    tokens = ["a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "x" * 10000,
              make_token("r1", "alice", secret="another-secret-0123456789abcdef0123456"),
              "\u00e9\u00e9.\u00e9.\u00e9", "", "Bearer"]
    for token in tokens:
        request = build_request("POST", "/whip/r1", offer.encode(), {
            "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
        resp = await send_in_pieces(node.host, node.port, [request])
        # aiohttp refuses a header line over 8190 bytes itself: 400, with our JSON body.
        assert resp.status in (400, 401) and json_error(resp.body), token[:20]
    for auth in ("Bearer \u00e9t\u00e9", "Bearer " + "a" * 8000, "Bearer \x7f\x01"):
        raw = build_request("POST", "/admin/drain", b"", {"Authorization": auth})
        resp = await send_in_pieces(node.host, node.port, [raw.replace(
            auth.encode("latin-1"), auth.encode("utf-8"))])
        assert resp.status in (400, 401, 431), (auth[:20], resp.status, resp.body)
    junk = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS hello
            b"HELLO\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n"]
    for raw in junk:
        resp = await send_in_pieces(node.host, node.port, [raw])
        assert resp.status == 400 and json_error(resp.body)["error"] == "bad_request", raw
    assert node.metric("http_requests_total", route="unparsed", method="-",
                       status="400") >= len(junk)
    for path in ("/metrics", "/healthz", "/readyz"):
        raw = build_request("GET", path, b"", {"X-Junk": "\u00ff" * 10})
        resp = await send_in_pieces(node.host, node.port, [raw])
        assert resp.status == 200, path
    assert not node.ctx.drainer or not node.ctx.drainer.draining


async def test_deeply_nested_websocket_json_is_refused(start_node: NodeFactory) -> None:
    """Failed before: RecursionError escaped `parse_message` (answered internal_error)."""
    node = await start_node()
    async with node.session.ws_connect(node.url("/ws")) as ws:
        for text in ("[" * 30000 + "]" * 30000, '{"type": "join", "token": ' + "[" * 500
                     + "]" * 500 + "}", '{"a":' * 100 + "1" + "}" * 100):
            await ws.send_str(text)
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert (reply["type"], reply["code"]) == ("error", "bad_json"), reply
        await ws.send_str('{"type": "leave"}')  # still answering: not joined yet
        reply = json.loads((await ws.receive(timeout=5)).data)
        assert reply["code"] == "not_joined"


# -- item 4: slow, half-open and too many connections ----------------------------------------

async def test_half_sent_request_is_dropped_after_the_header_timeout(
        start_node: NodeFactory) -> None:
    """Failed before (plain AppRunner): the half-sent request stayed open indefinitely."""
    node = await start_node(header_timeout=0.5, idle_timeout=30)
    reader, writer = await node.open()
    writer.write(b"POST /whip/r1 HTTP/1.1\r\nHost: sfu\r\nContent-Type: appl")
    assert await closed_within(reader, 3.0) == b""
    writer.close()
    # Slowloris: a header byte every 0.1 s never completes the headers in time.
    reader, writer = await node.open()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionError):
        for byte in b"GET /healthz HTTP/1.1\r\nHost: sfu\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)
            if reader.at_eof():
                raise ConnectionResetError
    assert loop.time() - started < 3.0
    writer.close()
    assert node.metric("http_connections_dropped_total", reason="header_timeout") == 2


async def test_slow_body_is_not_a_header_timeout(start_node: NodeFactory,
                                                 make_token: Callable[..., str]) -> None:
    node = await start_node(header_timeout=0.3, body_timeout=5)
    offer = (await make_offer("sendonly")).encode()
    request = build_request("POST", "/whip/r1", offer, {
        "Authorization": f"Bearer {make_token('r1', 'alice')}",
        "Content-Type": "application/sdp"})
    body_at = len(request) - len(offer)
    pieces = [request[:body_at]] + [request[i:i + 300] for i in range(body_at, len(request), 300)]
    resp = await send_in_pieces(node.host, node.port, pieces, pause=0.15)
    assert resp.status == 201, resp.body
    assert node.metric("http_connections_dropped_total", reason="header_timeout") == 0


async def test_idle_keep_alive_is_closed(start_node: NodeFactory) -> None:
    node = await start_node(idle_timeout=0.6)
    reader, writer = await node.open()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: sfu\r\n\r\n")  # keep-alive (HTTP/1.1)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert await closed_within(reader, 4.0) is not None  # closed after ~idle_timeout
    writer.close()
    reader, writer = await node.open()  # a connection that never sends a byte goes too
    assert await closed_within(reader, 4.0) == b""
    writer.close()
    assert node.metric("http_connections_dropped_total", reason="idle_timeout") == 2


async def test_connection_cap(start_node: NodeFactory) -> None:
    node = await start_node(max_connections=3)
    held = [await node.open() for _ in range(3)]
    await wait_for(lambda: node.metric("http_connections") == 3, "3 open connections", 5)
    reader, writer = await node.open()
    resp = await read_response(reader, timeout=5)
    writer.close()
    assert resp.status == 503 and json_error(resp.body)["error"] == "too_many_connections"
    assert node.metric("http_connections_dropped_total", reason="limit") == 1
    _, first = held.pop()
    first.close()
    await wait_for(lambda: node.metric("http_connections") == 2, "a connection freed", 5)
    async with node.session.get(node.url("/healthz")) as got:
        assert got.status == 200
    for _, writer in held:
        writer.close()
    await wait_for(lambda: node.metric("http_connections") == 0, "all closed", 5)


# -- item 5: session caps -----------------------------------------------------------------

async def _whep(node: Node, token: str, offer: str) -> tuple[int, bytes, dict[str, str]]:
    return await node.post("/whep/r1/alice", offer, token)


async def test_one_identity_cannot_fill_a_room(start_node: NodeFactory,
                                               make_token: Callable[..., str]) -> None:
    """Failed before: one subscribe-only token opened as many WHEP sessions as the room
    held (63 of 64), and a real publisher then got room_full."""
    node = await start_node(max_sessions_per_identity=3, max_sessions_per_ip=100,
                            connect_timeout=1.0)
    assert (await node.post("/whip/r1", await make_offer("sendonly"),
                            make_token("r1", "alice")))[0] == 201
    listener = make_token("r1", "mallory", grants=("subscribe",))
    offer = await make_offer("recvonly")
    locations = []
    for _ in range(3):
        status, _, headers = await _whep(node, listener, offer)
        assert status == 201
        locations.append(headers["Location"])
    status, body, headers = await _whep(node, listener, offer)
    assert status == 429 and json_error(body)["error"] == "too_many_sessions"
    assert int(headers["Retry-After"]) > 0
    assert node.metric("sessions_refused_total", reason="identity") == 1
    # Another identity still gets in; a DELETE frees a slot at once.
    assert (await _whep(node, make_token("r1", "bob"), offer))[0] == 201
    for location in locations[:2]:
        async with node.session.delete(node.url(location),
                                       headers={"Authorization": f"Bearer {listener}"}) as resp:
            assert resp.status == 200
    assert (await _whep(node, listener, offer))[0] == 201
    # A refused negotiation never holds a slot (one is free: five refusals, then a 201).
    for _ in range(5):
        status, body, _ = await node.post("/whep/r1/alice", _without(offer, "a=setup"),
                                          listener)
        assert status == 400 and json_error(body)["error"] == "bad_sdp"
    assert (await _whep(node, listener, offer))[0] == 201
    # The media deadline (connect_timeout) frees every slot of peers that never connect.
    await wait_for(lambda: node.app[LIMITS].active == 0, "the deadline to free the slots", 8)
    assert live_server_peers() == 0
    assert node.metric("sessions") == 0


async def test_per_address_and_node_caps(start_node: NodeFactory,
                                         make_token: Callable[..., str]) -> None:
    node = await start_node(max_sessions_per_ip=2, max_peer_connections=100)
    offer = await make_offer("sendonly")
    assert (await node.post("/whip/r1", offer, make_token("r1", "a")))[0] == 201
    assert (await node.post("/whip/r2", offer, make_token("r2", "b")))[0] == 201
    status, body, headers = await node.post("/whip/r3", offer, make_token("r3", "c"))
    assert status == 429 and "Retry-After" in headers and json_error(body)
    assert node.metric("sessions_refused_total", reason="address") == 1

    small = await start_node(max_peer_connections=1)
    assert (await small.post("/whip/r1", offer, make_token("r1", "a")))[0] == 201
    status, body, _ = await small.post("/whip/r2", offer, make_token("r2", "b"))
    assert status == 429 and json_error(body)["error"] == "too_many_sessions"
    assert small.metric("sessions_refused_total", reason="node") == 1


async def test_websocket_sessions_count_too(start_node: NodeFactory,
                                            make_token: Callable[..., str]) -> None:
    node = await start_node(max_sessions_per_ip=2)
    offer = await make_offer("sendonly")
    assert (await node.post("/whip/r1", offer, make_token("r1", "a")))[0] == 201
    async with node.session.ws_connect(node.url("/ws")) as ws:
        await ws.send_json({"type": "join", "token": make_token("r1", "b")})
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "joined"
        assert node.app[LIMITS].active == 2
        async with node.session.ws_connect(node.url("/ws")) as refused:
            await refused.send_json({"type": "join", "token": make_token("r1", "c")})
            reply = json.loads((await refused.receive(timeout=5)).data)
            assert reply["code"] == "too_many_sessions"
            closing = await refused.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4429
    await wait_for(lambda: node.app[LIMITS].active == 1, "the socket's slot back", 5)


async def test_timeouts_spare_websockets(start_node: NodeFactory,
                                         make_token: Callable[..., str]) -> None:
    """An upgraded connection is no longer HTTP: neither timer closes a quiet room socket."""
    node = await start_node(header_timeout=0.3, idle_timeout=0.3)
    async with node.session.ws_connect(node.url("/ws")) as ws:
        await ws.send_json({"type": "join", "token": make_token("r1", "ada")})
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "joined"
        await asyncio.sleep(1.2)
        await ws.send_json({"type": "set_mode", "mode": "off"})
        reply = json.loads((await ws.receive(timeout=5)).data)
        assert reply["type"] == "participants", reply
    assert node.metric("http_connections_dropped_total", reason="idle_timeout") == 0
    assert node.metric("http_connections_dropped_total", reason="header_timeout") == 0


def test_every_limit_is_a_setting() -> None:
    """Each limit has a flag and a DENOISE_SFU_* variable (the flag wins), and is checked."""
    import argparse

    from sfu import settings as settings_mod
    from sfu.settings import SettingsError, from_sources

    limits = {"header_timeout": 2.5, "body_timeout": 3.5, "idle_timeout": 4.5,
              "max_connections": 7, "max_peer_connections": 8,
              "max_sessions_per_identity": 9, "max_sessions_per_ip": 10}
    env = {"DENOISE_SFU_" + name.upper(): str(value) for name, value in limits.items()}
    got = from_sources(env=env)
    assert {name: getattr(got, name) for name in limits} == limits
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    args = parser.parse_args(["--max-connections", "11", "--body-timeout", "1.5"])
    got = from_sources(args, env)
    assert (got.max_connections, got.body_timeout, got.idle_timeout) == (11, 1.5, 4.5)
    defaults = Settings()
    assert (defaults.header_timeout, defaults.body_timeout, defaults.idle_timeout) == (
        10.0, 10.0, 30.0)
    for name in limits:
        with pytest.raises(SettingsError):
            from_sources(env={"DENOISE_SFU_" + name.upper(): "0"})


async def test_unusual_methods_share_one_metric_label(start_node: NodeFactory) -> None:
    """Only the methods the SFU serves are counted by name. llhttp knows some 35 methods,
    and aiohttp's pure-Python parser (no C extensions) takes any token: counting each under
    its own name would let a client grow the registry and /metrics."""
    node = await start_node()
    unusual = ("PROPFIND", "MKCOL", "SEARCH", "PURGE", "REPORT")
    for method in unusual:
        response = await send_in_pieces(node.host, node.port,
                                        [build_request(method, "/healthz")])
        assert response.status == 405, (method, response)
    samples = [s for family in node.ctx.metrics.registry.collect()
               if family.name == "denoise_sfu_http_requests" for s in family.samples
               if s.name.endswith("_total")]
    methods = {s.labels["method"] for s in samples}
    assert not methods & set(unusual), methods
    assert node.metric("http_requests_total", route="unmatched", method="other",
                       status="405") == len(unusual)
