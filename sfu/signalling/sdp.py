"""SDP surgery for server re-offers: keep the payload types and header extension IDs the client
chose (aiortc renumbers both on createOffer; Chromium refuses a change)."""

from __future__ import annotations

import contextlib
import logging

from aiortc import RTCPeerConnection, RTCSessionDescription

log = logging.getLogger(__name__)



# -- SDP: keep the header extension IDs the client chose --------------------------------------

def extmap_ids(sdp: str) -> dict[str, int]:
    """URI -> ID of every `a=extmap` line (one ID per URI across a BUNDLE)."""
    ids: dict[str, int] = {}
    for line in sdp.splitlines():
        if line.startswith("a=extmap:"):
            key, _, uri = line[len("a=extmap:"):].partition(" ")
            with contextlib.suppress(ValueError):
                ids.setdefault(uri.strip(), int(key.split("/")[0]))
    return ids


def rtpmap_pts(sdp: str) -> dict[str, int]:
    """Codec (`opus/48000/2`, lower case) -> the payload type of its first `a=rtpmap`."""
    pts: dict[str, int] = {}
    for line in sdp.splitlines():
        if line.startswith("a=rtpmap:"):
            key, _, codec = line[len("a=rtpmap:"):].partition(" ")
            with contextlib.suppress(ValueError):
                pts.setdefault(codec.strip().lower(), int(key))
    return pts


def pin_payload_types(sdp: str, client: dict[str, int]) -> str:
    """`sdp` with each codec's payload type renumbered to the client's.

    aiortc's createOffer renumbers codecs with its own payload types, and its receiver keeps
    the payload types of the first negotiation: a re-offer must keep the client's numbers.
    """
    ours = rtpmap_pts(sdp)
    used = set(ours.values())
    mapping: dict[int, int] = {}
    for codec, pt in ours.items():
        wanted = client.get(codec)
        if wanted is not None and wanted != pt and wanted not in used:
            mapping[pt] = wanted
    if not mapping:
        return sdp
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [str(mapping.get(int(f), f)) if f.isdigit() else f
                                         for f in parts[3:]])
        else:
            for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
                if line.startswith(prefix):
                    key, sep, rest = line[len(prefix):].partition(" ")
                    if key.isdigit() and int(key) in mapping:
                        line = f"{prefix}{mapping[int(key)]}{sep}{rest}"
        out.append(line)
    return "\r\n".join(out)


def pin_extmap_ids(sdp: str, ids: dict[str, int]) -> str:
    """`sdp` with each extension renumbered to the ID the client chose; others dropped.

    aiortc's createOffer numbers header extensions its own way every time; a browser refuses
    a re-offer that renumbers an extension of an active m-section ("RTP extension ID
    reassignment not supported"), so server offers reuse the client's numbering.
    """
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=extmap:"):
            uri = line[len("a=extmap:"):].partition(" ")[2].strip()
            if uri not in ids:
                continue
            line = f"a=extmap:{ids[uri]} {uri}"
        out.append(line)
    return "\r\n".join(out)


async def create_reoffer(pc: RTCPeerConnection, extmap: dict[str, int],
                         payload_types: dict[str, int]) -> RTCSessionDescription:
    """A server re-offer in the client's numbering, in the SDP and inside aiortc.

    aiortc's createOffer gives every transceiver aiortc's own payload types and extension IDs
    until the answer comes back. A receiver that starts inside that window (its DTLS handshake
    finishing after the re-offer went out) registers those numbers for good and drops every
    packet the client sends under its own: seen with Chromium 156, whose Opus at 111 met a
    receiver listening for 96, and the publisher went unheard for the whole call. So the
    transceivers negotiated before keep their codecs and extensions across createOffer
    (aiortc issue #686 reports the extension-ID half of this renumbering).
    """
    negotiated = {t: (t._codecs, t._headerExtensions) for t in pc.getTransceivers()
                  if t._codecs}
    offer = await pc.createOffer()
    for transceiver, (codecs, extensions) in negotiated.items():
        transceiver._codecs, transceiver._headerExtensions = codecs, extensions
    return RTCSessionDescription(
        sdp=pin_payload_types(pin_extmap_ids(offer.sdp, extmap), payload_types), type="offer")
