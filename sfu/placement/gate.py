"""What a join does with the placement: serve here, 307 to the owner, or 503 + Retry-After.

Publishers (`claim`) may place a new room; listeners (`locate`) only find one. A room that
another node took over is no longer served here (`stop_serving`): its sessions are closed,
and their clients join again through the owner.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sfu.errors import HttpError, ServiceUnavailable
from sfu.placement import Owner, PlacementUnavailable

if TYPE_CHECKING:
    from aiohttp import web

    from sfu.context import SfuContext
    from sfu.rooms import Participant, Subscription

log = logging.getLogger(__name__)


class Redirect(HttpError):
    """307 Temporary Redirect to the node that owns the room (WHIP allows it, RFC 9725)."""

    status = 307
    code = "room_elsewhere"
    owner: Owner | None = None


async def place_join(ctx: SfuContext, room: str, path_qs: str, *, create: bool) -> Owner | None:
    """Return the owner if it is this node (or None: nobody, for a lookup); raise `Redirect`
    to the owner's URL + `path_qs`, or 503 with Retry-After when placement is unavailable."""
    placement = ctx.placement
    try:
        owner = await (placement.claim(room) if create else placement.locate(room))
    except PlacementUnavailable as err:
        raise ServiceUnavailable(str(err), err.code,
                                 headers={"Retry-After": str(err.retry_after)}) from err
    if owner is None or owner.mine:
        return owner
    redirect = Redirect(f"room {room!r} is served by {owner.url}", headers={
        "Location": owner.url + path_qs, "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "Location"})
    redirect.owner = owner
    raise redirect


def ws_url(http_url: str) -> str:
    """The room socket of the node at `http_url`."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://"):] + "/ws"
    return "ws://" + http_url.removeprefix("http://") + "/ws"


def hosted(ctx: SfuContext, app: web.Application) -> tuple[list[str], int]:
    """Rooms with a session on this node (registry or room socket), and the session count."""
    from sfu.signalling.ws.hub import WS_HUB

    names = {room.name for room in ctx.registry.rooms()}
    sessions = ctx.registry.participant_count + ctx.registry.subscription_count
    hub = app.get(WS_HUB)
    if hub is not None:
        names.update(name for name, members in hub.rooms.items() if members)
    return sorted(names), sessions


async def stop_serving(ctx: SfuContext, app: web.Application, room: str) -> None:
    """Close every session of `room` here (another node holds it under a newer epoch)."""
    from sfu.signalling.ws.hub import WS_HUB

    hub = app.get(WS_HUB)
    closed = 0
    if hub is not None:
        for session in list(hub.rooms.get(room, {}).values()):
            await session.send({"type": "bye", "reason": "room_moved"})
            await hub.end(session, 4409)
            closed += 1
    found = ctx.registry.get(room)
    if found is not None:
        joined: list[Participant | Subscription] = [*found.participants.values(),
                                                    *found.subscriptions.values()]
        for member in joined:
            closed += await ctx.registry.leave(member.session_id)
    log.warning("stopped serving a room another node took over",
                extra={"room": room, "sessions_closed": closed})


async def ws_pre_upgrade(request: web.Request, room: str) -> None:
    """`GET /ws?room=R` on a node that does not own R: 307 to the owner's `/ws` before the
    upgrade (for clients that follow redirects; a browser's WebSocket does not, and gets the
    `redirect` message at `join` instead)."""
    from sfu.context import CONTEXT

    await place_join(request.app[CONTEXT], room, request.path_qs, create=False)


def ws_placer(ctx: SfuContext):  # type: ignore[no-untyped-def]
    """The room socket's join check: a `redirect` message to the owner (then close 4307), or
    an error with `retry_after` (close 4503) when placement is unavailable."""
    from sfu.signalling.ws.messages import MessageRefused as ProtocolError

    async def place(session, room: str) -> None:  # type: ignore[no-untyped-def]
        try:
            await place_join(ctx, room, "/ws", create=True)
        except Redirect as err:
            assert err.owner is not None
            owner = err.owner.url
            await session.send({"type": "redirect", "url": ws_url(owner), "location": owner,
                                "room": room})
            raise ProtocolError("room_elsewhere", err.message, 4307) from err
        except ServiceUnavailable as err:
            await session.send({"type": "error", "code": err.code, "message": err.message,
                                "retry_after": int(err.headers.get("Retry-After", "2"))})
            raise ProtocolError(err.code, err.message, 4503) from err
    return place
