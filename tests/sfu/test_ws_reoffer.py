"""Server re-offers keep the client's payload types inside aiortc, not only in the SDP.

A browser numbers Opus its own way (Chromium: 111; aiortc: 96). If the publisher's receiver
starts between a server re-offer and its answer, it registers whatever numbers its transceiver
holds then, for good. These tests negotiate real aiortc peer connections with the client's
offer renumbered as a browser's would be.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from sfu.signalling.sdp import create_reoffer, rtpmap_pts

BROWSER_OPUS = 111


def as_browser(sdp: str) -> str:
    """aiortc's offer with Opus renumbered to Chromium's payload type."""
    ours = rtpmap_pts(sdp)["opus/48000/2"]
    return (sdp.replace(f"a=rtpmap:{ours} opus", f"a=rtpmap:{BROWSER_OPUS} opus")
            .replace(f"a=fmtp:{ours} ", f"a=fmtp:{BROWSER_OPUS} ")
            .replace(f"a=rtcp-fb:{ours} ", f"a=rtcp-fb:{BROWSER_OPUS} ")
            .replace(f"UDP/TLS/RTP/SAVPF {ours} ", f"UDP/TLS/RTP/SAVPF {BROWSER_OPUS} "))


def opus_payload_types(pc: RTCPeerConnection) -> list[int]:
    return [c.payloadType for t in pc.getTransceivers() for c in t._codecs
            if c.mimeType.lower() == "audio/opus"]


async def negotiated_server() -> tuple[RTCPeerConnection, RTCPeerConnection, dict[str, int]]:
    """A client publishing one audio track with browser numbering, answered by the server, and
    a second (sendonly) transceiver added on the server: the state before a re-offer."""
    client, server = RTCPeerConnection(), RTCPeerConnection()
    client.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    offer = as_browser(client.localDescription.sdp)
    await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await server.setLocalDescription(await server.createAnswer())
    server.addTransceiver("audio", direction="sendonly")
    return client, server, rtpmap_pts(offer)


async def test_plain_create_offer_renumbers_the_negotiated_receiver() -> None:
    """The aiortc behaviour the re-offer guards against (if this stops holding, the guard may
    go)."""
    client, server, _ = await negotiated_server()
    try:
        assert opus_payload_types(server)[0] == BROWSER_OPUS
        await server.createOffer()
        assert BROWSER_OPUS not in opus_payload_types(server)
    finally:
        await client.close()
        await server.close()


async def test_a_reoffer_keeps_the_clients_numbers_in_the_sdp_and_in_aiortc() -> None:
    client, server, client_pts = await negotiated_server()
    try:
        offer = await create_reoffer(server, {}, client_pts)
        # The publisher's transceiver still holds the browser's number, so a receiver that
        # starts before the answer arrives listens for what the browser sends.
        publisher = server.getTransceivers()[0]
        assert [c.payloadType for c in publisher._codecs
                if c.mimeType.lower() == "audio/opus"] == [BROWSER_OPUS]
        assert rtpmap_pts(offer.sdp)["opus/48000/2"] == BROWSER_OPUS
        assert all(line.split(" ")[3] == str(BROWSER_OPUS)
                   for line in offer.sdp.splitlines() if line.startswith("m=audio"))
        await server.setLocalDescription(offer)
        assert [c.payloadType for c in publisher._codecs
                if c.mimeType.lower() == "audio/opus"] == [BROWSER_OPUS]
    finally:
        await client.close()
        await server.close()
