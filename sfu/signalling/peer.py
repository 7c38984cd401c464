"""aiortc peer connections for WHIP/WHEP: ICE configuration, non-trickle offer/answer.

aiortc gathers every ICE candidate inside `setLocalDescription`, so the answer returned here
already carries them (WHIP without trickle). SDP from the network is checked for shape before
aiortc sees it, and aiortc's own parse errors become `BadRequest`.
"""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from sfu.errors import BadRequest
from sfu.settings import Settings
from sfu.signalling.dtls import use_interop_certificate

#: Media sections (m-lines) an offer may have. aiortc gives each its own decoder thread, and
#: without BUNDLE its own ICE transport and UDP sockets: a 64 KB offer could hold hundreds.
#: Real clients send one or two (audio, maybe video); extras up to this still connect.
MAX_MEDIA_SECTIONS = 16


def media_sections(sdp: str) -> int:
    """How many m-lines `sdp` has."""
    text = sdp.replace("\r\n", "\n")
    return text.count("\nm=") + int(text.startswith("m="))


def check_media_sections(sdp: str) -> None:
    """`BadRequest` (bad_sdp) when `sdp` has more than `MAX_MEDIA_SECTIONS` m-lines."""
    count = media_sections(sdp)
    if count > MAX_MEDIA_SECTIONS:
        raise BadRequest(f"the offer has {count} media sections; at most "
                         f"{MAX_MEDIA_SECTIONS} are accepted", "bad_sdp")


def create_peer_connection(settings: Settings) -> RTCPeerConnection:
    """A peer connection using the configured STUN/TURN servers (none by default), whose DTLS
    also accepts RSA-keyed peers (sfu/signalling/dtls.py)."""
    servers = [RTCIceServer(urls=url) for url in settings.ice_servers]
    return use_interop_certificate(RTCPeerConnection(RTCConfiguration(iceServers=servers)))


def check_offer(sdp: str) -> str:
    """`sdp` if it looks like an SDP offer with an audio section, else `BadRequest`."""
    if not sdp.startswith("v=0"):
        raise BadRequest("body is not an SDP session description (must start with v=0)",
                         "bad_sdp")
    if "\nm=audio " not in sdp.replace("\r\n", "\n"):
        raise BadRequest("the offer has no audio section", "bad_sdp")
    check_media_sections(sdp)
    return sdp


async def apply_offer(pc: RTCPeerConnection, sdp: str) -> None:
    """Set the remote offer; malformed or unsupported SDP becomes `BadRequest`."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=check_offer(sdp), type="offer"))
    except BadRequest:
        raise
    except Exception as err:  # aiortc's parser raises anything (AttributeError, ...) on bad SDP
        raise BadRequest(f"cannot use this SDP offer: {str(err)[:200] or type(err).__name__}",
                         "bad_sdp") from err


async def answer(pc: RTCPeerConnection, only_audio: bool = True) -> str:
    """Create and set the answer (gathering all ICE candidates) and return its SDP.

    With `only_audio`, video or other sections of the offer are answered inactive, so nobody
    decodes media this SFU does not forward.
    """
    if only_audio:
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio":
                transceiver.direction = "inactive"
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as err:  # as above: the offer it answers came from the network
        raise BadRequest(f"cannot answer this SDP offer: "
                         f"{str(err)[:200] or type(err).__name__}", "bad_sdp") from err
    return pc.localDescription.sdp
