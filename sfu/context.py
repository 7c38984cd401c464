"""What every handler of one app shares, in one object at `app[CONTEXT]`.

Its own module so that the app and the handlers it mounts (WHIP/WHEP, the WebSocket hub) import
it, and not each other.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from denoiser.engine import Engine
from sfu.metrics import Metrics
from sfu.rooms import RoomRegistry
from sfu.settings import Settings

if TYPE_CHECKING:
    from sfu.placement import Placement
    from sfu.placement.drain import Drainer


@dataclass(eq=False)
class SfuContext:
    """What every handler of one app shares."""

    settings: Settings
    metrics: Metrics
    registry: RoomRegistry = field(init=False)
    placement: Placement = field(init=False)
    engine: Engine | None = None
    drainer: Drainer | None = None
    stop: asyncio.Event | None = None  # set to stop the server (`serve` provides it)
    started_at: float = field(default_factory=time.time)


CONTEXT = web.AppKey("denoise_sfu_context", SfuContext)
