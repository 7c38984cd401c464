"""DTLS that interoperates with standard WebRTC stacks whatever their certificate's key type.

aiortc (1.16) offers only `ECDHE-ECDSA` cipher suites. In DTLS 1.2 the suite fixes the key
type of the *server's* certificate, so:

- server in the DTLS server role (the offer says `a=setup:active`): our certificate is ECDSA
  and we pick an ECDSA suite; the peer's client certificate, RSA or ECDSA, is checked by its
  signature and its SDP fingerprint, not by the suite. Works with stock aiortc.
- server in the DTLS client role (the offer says `actpass`, as browsers and GStreamer do, and
  aiortc answers `active`): the peer's certificate decides. GStreamer's `webrtcbin` (and other
  OpenSSL-based stacks) use RSA by default, so the peer can only pick an `ECDHE-RSA` suite,
  which aiortc never offers: "no shared cipher", the session dies right after its 201.

`InteropCertificate` is aiortc's certificate (an ECDSA P-256 key, as before) whose SSL context
offers the ECDHE-RSA suites too, all with forward secrecy and AEAD or SHA-1 HMAC as aiortc's
own list; `use_interop_certificate(pc)` gives it to a peer connection before negotiation.
aiortc keeps its certificates in a private list (`_RTCPeerConnection__certificates`): a change
of aiortc that moves it fails here loudly, never silently with the narrow list.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile
from OpenSSL import SSL

# aiortc's four ECDSA suites first (its order), then the same with RSA server certificates,
# then AES-256-GCM for both; no static RSA key exchange, no CBC without ECDHE.
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
)).encode()

_CERTIFICATES = "_RTCPeerConnection__certificates"


class InteropCertificate(RTCCertificate):
    """aiortc's certificate with a cipher list that also accepts RSA-keyed DTLS servers."""

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(CIPHERS)
        return ctx


def use_interop_certificate(pc: RTCPeerConnection) -> RTCPeerConnection:
    """Give `pc` a fresh `InteropCertificate` (before any transceiver exists); returns `pc`."""
    certificates = getattr(pc, _CERTIFICATES, None)
    if not isinstance(certificates, list) or len(certificates) != 1:
        raise RuntimeError("this aiortc keeps its DTLS certificates elsewhere: "
                           "sfu/signalling/dtls.py needs updating")
    if pc.getTransceivers():
        raise RuntimeError("set the certificate before adding tracks or transceivers")
    setattr(pc, _CERTIFICATES, [InteropCertificate.generateCertificate()])
    return pc
