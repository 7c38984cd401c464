"""Signalling: peer connections, SDP surgery, WHIP/WHEP and the WebSocket room protocol."""
