"""The SFU's audio path: decode once, denoise, encode once per speaker, fan the packets out."""
