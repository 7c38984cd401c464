"""The shared denoising worker: an engine served over TCP to many SFU nodes.

`protocol` is the binary wire format, `server` serves a `LocalEngine` to every node that
connects (their streams share one batched forward), `client` is the node's side: a
`RemoteEngine` with the same interface as the in-process engine.
"""
