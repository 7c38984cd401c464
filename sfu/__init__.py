"""denoise-sfu: the WebRTC selective-forwarding unit that denoises every voice on the server."""
