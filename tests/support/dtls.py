"""DTLS certificates of "other" WebRTC stacks for interop tests: an OpenSSL-default cipher
list (what GStreamer, libwebrtc and most stacks offer) with an RSA or an ECDSA key."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile, generate_certificate
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL


class StandardCertificate(RTCCertificate):
    """aiortc's DTLS machinery with OpenSSL's default cipher list instead of aiortc's four
    ECDSA suites, so an RSA key can serve as a DTLS server, as in GStreamer's webrtcbin."""

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(b"DEFAULT")
        return ctx


def make_certificate(kind: str) -> StandardCertificate:
    """A fresh self-signed certificate: `rsa` (2048-bit, GStreamer's default) or `ecdsa`."""
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(kind)
    return StandardCertificate(key, generate_certificate(key))  # type: ignore[arg-type]


def peer_with_certificate(kind: str) -> RTCPeerConnection:
    """A client peer connection whose DTLS certificate is `kind` (see `make_certificate`)."""
    pc = RTCPeerConnection()
    pc._RTCPeerConnection__certificates = [make_certificate(kind)]  # type: ignore[attr-defined]
    return pc


def force_setup(sdp: str, setup: str) -> str:
    """`sdp` with every `a=setup:` set to `setup` (`actpass`: the server answers `active` and
    is the DTLS client; `active`: the server answers `passive` and is the DTLS server)."""
    lines = sdp.split("\r\n")
    return "\r\n".join(f"a=setup:{setup}" if line.startswith("a=setup:") else line
                       for line in lines)
