"""`Link` header values of a WHIP/WHEP 201 (RFC 9725 section 4.6, RFC 8288)."""

from __future__ import annotations

from collections.abc import Iterable


def ice_server_links(urls: Iterable[str]) -> list[str]:
    """One `<url>; rel="ice-server"` per configured STUN/TURN URL, so clients that take their
    ICE servers from the WHIP/WHEP answer use the same ones as the server.

    A URL holding `<`, `>`, `"`, a comma or whitespace cannot be written inside `<...>`
    unescaped: it is refused (ValueError) rather than sent as a broken header.
    """
    links = []
    for url in urls:
        if not url or any(c in url for c in '<>" \t\r\n,'):
            raise ValueError(f"ICE server URL {url!r} cannot go in a Link header")
        links.append(f'<{url}>; rel="ice-server"')
    return links
