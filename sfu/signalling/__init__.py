"""WebRTC signalling: peer connections, SDP, WHIP/WHEP and the WebSocket room protocol."""
