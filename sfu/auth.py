"""Room tokens: HS256 JWTs with claims `room`, `sub` (identity), `grants`, `iat`, `exp`.

`issue_token` makes one (the `token` command, the demo link); `verify_token` checks signature,
expiry and shape and raises `Unauthorized`; `authorize` checks room and grant and raises
`Forbidden`. Room and identity names are restricted to a URL-safe alphabet because they appear
in paths (`/whep/{room}/{identity}`) and in metrics.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from aiohttp import web

from sfu.errors import Forbidden, Unauthorized

ALGORITHM = "HS256"
GRANTS = ("publish", "subscribe")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_TOKEN_CHARS = 4096
LEEWAY_S = 5


def check_name(kind: str, value: object) -> str:
    """`value` if it is a valid room or identity name, else ValueError."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"{kind} must be 1-64 characters of letters, digits, '_', '.', '-' "
                         f"starting with a letter or digit: {value!r}")
    return value


@dataclass(frozen=True)
class Claims:
    """A verified token."""

    room: str
    identity: str
    grants: frozenset[str]
    expires_at: int


def issue_token(secret: str, room: str, identity: str, ttl: int = 3600,
                grants: Iterable[str] = GRANTS, now: float | None = None) -> str:
    """A signed token for `identity` in `room`, valid for `ttl` seconds."""
    if not secret:
        raise ValueError("a secret is required to sign tokens")
    check_name("room", room)
    check_name("identity", identity)
    grant_list = sorted(set(grants))
    unknown = set(grant_list) - set(GRANTS)
    if unknown:
        raise ValueError(f"unknown grants {sorted(unknown)}; known: {', '.join(GRANTS)}")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    issued = int(time.time() if now is None else now)
    payload = {"room": room, "sub": identity, "grants": grant_list,
               "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Claims:
    """The claims of `token`, or `Unauthorized` (bad signature, expired, malformed)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("token too long", "invalid_token")
    if not token.isascii():  # PyJWT would fail to encode it (a 500), and no JWT is
        raise Unauthorized("invalid token: not ASCII", "invalid_token")
    try:
        payload = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
                             options={"require": ["exp", "sub", "room"]})
    except jwt.ExpiredSignatureError as err:
        raise Unauthorized("token expired", "token_expired") from err
    except jwt.PyJWTError as err:
        raise Unauthorized(f"invalid token: {err}", "invalid_token") from err
    room, identity, grants = payload.get("room"), payload.get("sub"), payload.get("grants", [])
    try:
        room = check_name("room", room)
        identity = check_name("identity", identity)
    except ValueError as err:
        raise Unauthorized(f"invalid token: {err}", "invalid_token") from err
    if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
        raise Unauthorized("invalid token: grants must be a list of strings", "invalid_token")
    return Claims(room=room, identity=identity, grants=frozenset(grants) & frozenset(GRANTS),
                  expires_at=int(payload["exp"]))


def bearer_token(request: web.Request) -> str:
    """The token of the request's `Authorization: Bearer` header, or `Unauthorized`."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization: Bearer token", "missing_token")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", "invalid_token")
    return token.strip()


def authenticate(request: web.Request, secret: str) -> Claims:
    """Verify the request's bearer token."""
    return verify_token(secret, bearer_token(request))


def authorize(claims: Claims, room: str, grant: str) -> None:
    """`Forbidden` unless the token is for `room` and carries `grant`."""
    if claims.room != room:
        raise Forbidden(f"token is for room {claims.room!r}, not {room!r}", "wrong_room")
    if grant not in claims.grants:
        raise Forbidden(f"token does not grant {grant!r}", "missing_grant")
