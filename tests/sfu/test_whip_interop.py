"""WHIP/WHEP as RFC 9725 and the WHEP draft read (docs/whip-whep.md), and DTLS with peers whose
certificate is RSA or ECDSA, with the server in either DTLS role: real aiortc peers over the
machine's interface, a real LocalEngine, a real STUN server on the interface for `Link`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from aioice import stun
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from multidict import CIMultiDict

from denoiser.engine import Engine
from sfu.signalling.dtls import use_interop_certificate
from sfu.signalling.ledger import Issued, SessionLedger
from sfu.signalling.links import ice_server_links
from support.dtls import force_setup, peer_with_certificate
from support.sfu import RunningSfu, SfuFactory

pytestmark = pytest.mark.timeout(120)


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def post_offer(sfu: RunningSfu, pc: RTCPeerConnection, path: str, token: str,
                     setup: str = "actpass") -> tuple[int, CIMultiDict[str], list[str], str]:
    """POST `pc`'s offer (its `a=setup:` forced to `setup`); on 201 apply the answer."""
    await pc.setLocalDescription(await pc.createOffer())
    offer = force_setup(pc.localDescription.sdp, setup)
    async with sfu.session.post(sfu.url(path), data=offer, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as resp:
        body = await resp.text()
        headers, links = resp.headers.copy(), resp.headers.getall("Link", [])
        status = resp.status
    if status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return status, headers, links, body


async def delete(sfu: RunningSfu, location: str, token: str) -> tuple[int, str]:
    async with sfu.session.delete(sfu.url(location),
                                  headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.text()


class StunServer(asyncio.DatagramProtocol):
    """A real STUN binding responder (RFC 5389): it answers each request with the sender's
    address, so the server's gatherer gets a server-reflexive candidate from it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        self.requests += 1
        response = stun.Message(message_method=stun.Method.BINDING,
                                message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


# -- DTLS -------------------------------------------------------------------------------------

@pytest.mark.parametrize("setup", ["actpass", "active"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
async def test_publish_and_subscribe_with_rsa_and_ecdsa_peers_in_both_dtls_roles(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path, kind: str, setup: str) -> None:
    """`actpass` (browsers, GStreamer): the server answers `active` and is the DTLS client,
    so the peer's certificate picks the suite; `active`: the server is the DTLS server."""
    sfu = await sfu_factory(gain_engine)
    ada, bob = peer_with_certificate(kind), peer_with_certificate(kind)
    player = MediaPlayer(str(speech_opus), loop=True)
    frames: list[object] = []
    try:
        ada.addTrack(player.audio)
        status, _, _, answer = await post_offer(sfu, ada, "/whip/r?mode=on",
                                                make_token("r", "ada"), setup)
        assert status == 201, answer
        assert f"a=setup:{'active' if setup == 'actpass' else 'passive'}" in answer
        await wait_for(lambda: ada.connectionState in ("connected", "failed"))
        assert ada.connectionState == "connected"

        bob.addTransceiver("audio", direction="recvonly")

        async def collect(track) -> None:  # type: ignore[no-untyped-def]
            while True:
                frames.append(await track.recv())

        bob.on("track", lambda track: asyncio.ensure_future(collect(track)))
        status, _, _, answer = await post_offer(sfu, bob, "/whep/r/ada",
                                                make_token("r", "bob"), setup)
        assert status == 201, answer
        await wait_for(lambda: bob.connectionState in ("connected", "failed"))
        assert bob.connectionState == "connected"
        await wait_for(lambda: len(frames) >= 25)  # half a second of the denoised voice
        stream = sfu.ctx.registry.get("r").participants["ada"].pipeline.stream
        assert stream.counters["denoised"] > 0
    finally:
        player.audio.stop()
        await ada.close()
        await bob.close()


async def test_stock_aiortc_fails_an_rsa_dtls_server_and_the_interop_certificate_does_not(
        host_ip: str) -> None:
    """The reason for sfu/signalling/dtls.py, measured: an answerer with aiortc's own cipher
    list cannot complete DTLS as client against an RSA-keyed DTLS server; with the widened
    list it can."""

    async def connect(answerer: RTCPeerConnection) -> str:
        offerer = peer_with_certificate("rsa")  # actpass: the offerer becomes DTLS server
        try:
            offerer.createDataChannel("probe")
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            assert "a=setup:active" in answerer.localDescription.sdp
            await offerer.setRemoteDescription(answerer.localDescription)
            await wait_for(lambda: answerer.connectionState in ("connected", "failed"))
            return answerer.connectionState
        finally:
            await offerer.close()
            await answerer.close()

    assert await connect(RTCPeerConnection()) == "failed"
    assert await connect(use_interop_certificate(RTCPeerConnection())) == "connected"


async def test_the_interop_certificate_is_set_before_negotiation_only() -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    with pytest.raises(RuntimeError, match="before adding"):
        use_interop_certificate(pc)
    await pc.close()


# -- WHIP/WHEP headers and methods ------------------------------------------------------------

async def test_201_carries_exactly_application_sdp_location_etag_and_ice_server_links(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str],
        host_ip: str) -> None:
    loop = asyncio.get_running_loop()
    transport, stun_server = await loop.create_datagram_endpoint(
        StunServer, local_addr=(host_ip, 0), family=socket.AF_INET)
    stun_url = f"stun:{host_ip}:{transport.get_extra_info('sockname')[1]}"
    sfu = await sfu_factory(gain_engine, ice_servers=(stun_url,))
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        status, headers, links, answer = await post_offer(sfu, pc, "/whip/r",
                                                          make_token("r", "ada"))
        assert status == 201, answer
        assert headers["Content-Type"] == "application/sdp"
        assert headers["Location"].startswith("/whip/r/")
        assert headers["ETag"].startswith('"') and headers["ETag"].endswith('"')
        assert links == [f'<{stun_url}>; rel="ice-server"']
        assert "Link" in headers["Access-Control-Expose-Headers"]
        # the server used the same STUN server: it asked it, and offers the reflexive address
        assert stun_server.requests > 0 and " typ srflx " in answer
    finally:
        await pc.close()
        transport.close()


async def test_no_link_without_ice_servers_and_patch_is_a_clear_405(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str]) -> None:
    sfu = await sfu_factory(gain_engine)
    token = make_token("r", "ada")
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        status, headers, links, _ = await post_offer(sfu, pc, "/whip/r", token)
        assert status == 201 and links == []
        location = headers["Location"]
        for body, kind in (("a=ice-ufrag:x\r\na=ice-pwd:y\r\n", "ICE restart"),
                           ("a=candidate:1 1 udp 1 192.0.2.1 9 typ host\r\n", "trickle")):
            async with sfu.session.patch(sfu.url(location), data=body, headers={
                    "Authorization": f"Bearer {token}", "If-Match": "*",
                    "Content-Type": "application/trickle-ice-sdpfrag"}) as resp:
                assert resp.status == 405, kind
                assert resp.headers["Allow"] == "DELETE, OPTIONS"
                assert (await resp.json())["error"] == "trickle_not_supported"
        async with sfu.session.options(sfu.url(location)) as resp:
            assert resp.status == 204
            assert resp.headers["Allow"] == "DELETE, OPTIONS"  # PATCH is not offered
            assert "Accept-Patch" not in resp.headers
        async with sfu.session.options(sfu.url("/whip/r")) as resp:
            assert resp.status == 204 and resp.headers["Accept-Post"] == "application/sdp"
        # RFC 9725 4.2: GET, HEAD and PUT on the endpoint, POST on the session: 405
        for method, path in (("GET", "/whip/r"), ("HEAD", "/whip/r"), ("PUT", "/whip/r"),
                             ("POST", location), ("GET", "/whep/r/ada")):
            async with sfu.session.request(method, sfu.url(path)) as resp:
                assert resp.status == 405, (method, path)
    finally:
        await pc.close()


async def test_delete_of_a_subscriber_whose_publisher_left(
        sfu_factory: SfuFactory, gain_engine: Engine, make_token: Callable[..., str],
        speech_opus: Path) -> None:
    """The server closes every subscription to a voice when its publisher leaves; the
    listener's own DELETE is then answered 200 "ended" (once; then 404), and only for it."""
    sfu = await sfu_factory(gain_engine)
    ada_token, bob_token = make_token("r", "ada"), make_token("r", "bob")
    ada, bob = RTCPeerConnection(), RTCPeerConnection()
    player = MediaPlayer(str(speech_opus), loop=True)
    try:
        ada.addTrack(player.audio)
        status, ada_headers, _, _ = await post_offer(sfu, ada, "/whip/r", ada_token)
        assert status == 201
        bob.addTransceiver("audio", direction="recvonly")
        status, bob_headers, _, _ = await post_offer(sfu, bob, "/whep/r/ada", bob_token)
        assert status == 201
        bob_location = bob_headers["Location"]
        assert await delete(sfu, ada_headers["Location"], ada_token) == (200, '{"status": "left"}')
        assert sfu.ctx.registry.subscription_count == 0
        assert (await delete(sfu, bob_location, make_token("r", "mallory")))[0] == 403
        assert (await delete(sfu, bob_location, make_token("other", "bob")))[0] == 403
        assert (await delete(sfu, bob_location.replace("/ada/", "/eve/"), bob_token))[0] == 404
        remembered = sfu.ctx.metrics.registry.get_sample_value("denoise_sfu_sessions_remembered")
        assert remembered == 1  # bob's, ended by the server, not yet deleted
        assert await delete(sfu, bob_location, bob_token) == (200, '{"status": "ended"}')
        assert sfu.ctx.metrics.registry.get_sample_value("denoise_sfu_sessions_remembered") == 0
        assert (await delete(sfu, bob_location, bob_token))[0] == 404
        assert (await delete(sfu, ada_headers["Location"], ada_token))[0] == 404
    finally:
        player.audio.stop()
        await ada.close()
        await bob.close()


def test_ledger_is_bounded_and_forgets() -> None:
    now = [0.0]
    ledger = SessionLedger(limit=2, ttl=10.0, clock=lambda: now[0])
    for i in range(3):
        ledger.add(f"s{i}", Issued("publisher", "r", f"u{i}"))
    assert len(ledger) == 2 and ledger.get("s0") is None and ledger.get("s2") is not None
    now[0] = 10.5
    assert ledger.get("s2") is None and len(ledger) == 0
    ledger.add("s3", Issued("subscriber", "r", "u", "ada"))
    assert ledger.pop("s3") == Issued("subscriber", "r", "u", "ada") and ledger.pop("s3") is None
    with pytest.raises(ValueError):
        SessionLedger(limit=0)


def test_ice_server_links_refuse_what_a_header_cannot_hold() -> None:
    assert ice_server_links(["stun:a.example:3478", "turn:b.example?transport=udp"]) == [
        '<stun:a.example:3478>; rel="ice-server"',
        '<turn:b.example?transport=udp>; rel="ice-server"']
    for bad in ("", "stun:a b", "stun:<x>", 'stun:"x"', "stun:a,b", "stun:a\r\nX: y"):
        with pytest.raises(ValueError):
            ice_server_links([bad])
