"""Worker addresses, `HOST:PORT` (light to import: the settings of `serve` read it)."""

from __future__ import annotations


def parse_address(address: str, default_port: int = 7100, *, listen: bool = False
                  ) -> tuple[str, int]:
    """`HOST:PORT` (or `HOST`, `[v6]:PORT`) -> (host, port); port 0 only to `listen`."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or "]" in port:
        host, port = address.strip(), str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not (0 if listen else 1) <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)
