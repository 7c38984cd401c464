"""The worker's connection limits and their defaults (light to import: the CLI reads them)."""

HANDSHAKE_TIMEOUT_S = 2.0  # a connection must be authenticated within this
HEARTBEAT_TIMEOUT_S = 5.0  # a node (or, seen from a node, a worker) silent this long is gone
MAX_HANDSHAKES = 64  # connections in their handshake at once; more are closed unread
