"""The SFU's aiohttp application: WHIP/WHEP, health, metrics, the demo page, the room socket.

`create_app(settings, engine=None)` wires the pieces: a `RoomRegistry` whose pipelines are
`SpeakerPipeline(track, DenoisedStream(engine, ...), metrics)`, the WHIP/WHEP handlers, and
the engine. With `engine=None` the app builds the engine the settings ask for on startup and
closes it on cleanup; an engine passed in belongs to the caller (started and closed by it).
Everything the app shares is in one `SfuContext` at `app[CONTEXT]`. Its `placement` says
which rooms this node serves (`sfu.placement`: in memory, or through Redis with `--redis`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler
from aiortc import MediaStreamTrack

from denoiser.engine import Engine
from denoiser.engine.prometheus import EngineCollector
from sfu.context import CONTEXT, SfuContext
from sfu.errors import NotFound, ServiceUnavailable, error_middleware
from sfu.limits import LIMITS, SessionLimits
from sfu.media.connect_race import install_connect_race_handler
from sfu.memory_trim import trim_periodically
from sfu.metrics import CONTENT_TYPE, Metrics
from sfu.placement import Placement
from sfu.placement.drain import drain_handler
from sfu.placement.gate import hosted, stop_serving
from sfu.placement.metrics import PlacementCollector
from sfu.rooms import Participant, Pipeline, PipelineFactory, RoomRegistry
from sfu.settings import Settings, SettingsError
from sfu.signalling import ws
from sfu.signalling.whip import WhipHandlers

if TYPE_CHECKING:
    from denoiser.stream import DenoisedStream

log = logging.getLogger(__name__)


def check_supported(settings: Settings) -> None:
    """Refuse settings this version cannot serve yet, with a clear message."""
    if not settings.secret:
        raise SettingsError("a secret is required (--secret or DENOISE_SFU_SECRET)")
    if settings.redis and not settings.public_url:
        raise SettingsError("--redis needs --public-url: the URL other nodes redirect "
                            "this node's rooms to")
    if settings.engine == "local" and settings.workers:
        raise SettingsError("--worker is only used with --engine workers")


def child_worker_flags(settings: Settings) -> list[str]:
    """`denoise-sfu worker` flags for the worker `serve --engine workers` starts itself."""
    flags = ["--device", settings.device, "--log-format", settings.log_format]
    if settings.max_streams is not None:
        flags += ["--max-streams", str(settings.max_streams)]
    if settings.model_weights is not None:
        flags += ["--model-weights", settings.model_weights]
    if settings.cpu_model_weights is not None:
        flags += ["--cpu-model-weights", settings.cpu_model_weights]
    if settings.model_lookahead is not None:
        flags += ["--model-lookahead", str(settings.model_lookahead)]
    return flags


async def build_engine(settings: Settings) -> Engine:
    """The engine the settings ask for: the workers named (`WorkerPool`), a worker process of
    our own when none is named (`ChildWorkerPool`), or the in-process engine with the shipped
    model (loading runs off the event loop)."""
    if settings.engine == "workers" and settings.workers:
        from denoiser.worker.pool import WorkerPool

        return WorkerPool(settings.workers, secret=settings.secret)
    if settings.engine == "workers" and settings.redis:  # the workers registered there
        from denoiser.worker.redis_pool import RedisWorkerPool

        return RedisWorkerPool(settings.redis, node=node_id(settings), secret=settings.secret)
    if settings.engine == "workers":  # none named: one of our own, on this machine
        from denoiser.worker.pool import ChildWorkerPool

        return ChildWorkerPool(child_worker_flags(settings), secret=settings.secret)
    from denoiser.engine.capacity import Admission, measure_tick_cost
    from denoiser.engine.local import LocalEngine
    from denoiser.model.weights import load_default_model, weights_for_device

    weights = weights_for_device(settings.device, settings.model_weights,
                                 settings.cpu_model_weights)
    model = await asyncio.to_thread(load_default_model, settings.device,
                                    settings.model_lookahead, weights)
    max_streams = settings.max_streams
    admission = None
    if max_streams is None and not settings.device.startswith("cuda"):
        # On CPU, admit what the engine keeps in real time *batched* (measured now, and
        # re-measured from every tick); beyond it, streams pass through (counted) until the
        # cost says there is room.
        admission = Admission(await asyncio.to_thread(measure_tick_cost, model))
        max_streams = admission.cap
    engine = LocalEngine(model, device=settings.device, max_streams=max_streams or 256,
                         admission=admission)
    log.info("engine capacity", extra={
        "max_streams": engine.max_streams, "measured": admission is not None,
        "admitted": admission.limit if admission else engine.max_streams,
        "traced": engine.trace, "model_weights": weights or "default"})
    return engine


def node_id(settings: Settings) -> str:
    """This node's name in the placement (`--node-id`, else host name and port)."""
    import socket

    return settings.node_id or f"{socket.gethostname()}-{settings.port}"


def build_placement(ctx: SfuContext, app: web.Application) -> Placement:
    """Redis placement with `--redis`, else every room on this node (in memory)."""
    settings = ctx.settings

    def load() -> tuple[list[str], int]:
        return hosted(ctx, app)

    if settings.redis:
        from sfu.placement.redis import RedisPlacement

        return RedisPlacement(settings.redis, node_id(settings), settings.base_url,
                              settings.max_rooms, load)
    from sfu.placement.memory import MemoryPlacement

    return MemoryPlacement(node_id(settings), settings.base_url, settings.max_rooms,
                           lambda: load()[0])


def _pipeline_factory(ctx: SfuContext) -> PipelineFactory:
    def make(track: MediaStreamTrack, stream_id: str, mode: str) -> Pipeline:
        from denoiser.bypass import BypassDetector
        from denoiser.stream import DenoisedStream
        from sfu.media.pipeline import SpeakerPipeline

        if ctx.engine is None:
            raise ServiceUnavailable("the denoising engine is not running", "engine_unavailable")
        # Every stream gets the tone/music detector; in mode off neither it nor the model
        # runs (`warm_when_off=False`: an off call costs the media path alone).
        stream = DenoisedStream(ctx.engine, stream_id, mode=mode, detector=BypassDetector(),
                                warm_when_off=False,
                                deadline=ctx.settings.hop_deadline)
        budget = ctx.settings.latency_budget
        media = {"complexity": ctx.settings.opus_complexity,
                 "forward": ctx.settings.forward_mode_off}
        if budget is None:
            return SpeakerPipeline(track, stream, ctx.metrics, **media)  # type: ignore[arg-type]
        return SpeakerPipeline(track, stream, ctx.metrics, latency_budget=budget,
                               **media)  # type: ignore[arg-type]
    return make


def hop_counts(stream: DenoisedStream) -> dict[str, int]:
    """What `Metrics.sync_hops` takes from a stream: its hop outcomes and `not_sent`."""
    return {**stream.counters, "not_sent": stream.hops_not_sent}


def _release(ctx: SfuContext) -> Callable[[Participant], None]:
    """After a pipeline stops: free its engine slot and count its last hops."""
    def release(participant: Participant) -> None:
        stream = participant.pipeline.stream
        stream.close()
        ctx.metrics.sync_hops(participant.stream_id, hop_counts(stream), final=True)
    return release


def sync_live_hops(ctx: SfuContext) -> None:
    """Bring the hop counters up to date with every live stream (before a scrape)."""
    for room in ctx.registry.rooms():
        for participant in room.participants.values():
            ctx.metrics.sync_hops(participant.stream_id, hop_counts(participant.pipeline.stream))


#: Methods counted under their own name; any other (a client may send any token) is "other",
#: so that no client can grow `http_requests_total` one label set per invented method.
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in COUNTED_METHODS else "other"


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as err:
        status = err.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[CONTEXT].metrics.http_requests.labels(route, method_label(request.method),
                                                          str(status)).inc()


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The SFU application (see module docstring)."""
    check_supported(settings)
    metrics = Metrics()
    ctx = SfuContext(settings=settings, metrics=metrics, engine=engine)
    ctx.registry = RoomRegistry(_pipeline_factory(ctx), settings.max_sessions_per_room,
                                on_pipeline_stopped=_release(ctx))
    metrics.rooms.set_function(lambda: ctx.registry.room_count)
    metrics.participants.set_function(lambda: ctx.registry.participant_count)
    metrics.subscribers.set_function(lambda: ctx.registry.subscription_count)
    metrics.registry.register(EngineCollector(lambda: ctx.engine))

    app = web.Application(middlewares=[_count_requests, error_middleware],
                          client_max_size=settings.max_sdp_bytes)
    app[CONTEXT] = ctx
    ctx.placement = build_placement(ctx, app)
    from sfu.placement.drain import Drainer

    ctx.drainer = Drainer(ctx, app)
    metrics.registry.register(PlacementCollector(lambda: ctx.placement, lambda: ctx.engine))
    lost_rooms: set[asyncio.Task[None]] = set()

    def on_lost(room: str) -> None:
        task = asyncio.ensure_future(stop_serving(ctx, app, room))
        lost_rooms.add(task)
        task.add_done_callback(lost_rooms.discard)

    ctx.placement.on_lost(on_lost)
    limits = SessionLimits(settings.max_sessions_per_identity, settings.max_sessions_per_ip,
                           settings.max_peer_connections, metrics)
    app[LIMITS] = limits
    metrics.sessions.set_function(lambda: limits.active)
    whip = WhipHandlers(ctx, limits)
    app.router.add_routes(whip.routes())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post("/admin/drain", drain_handler)
    ws.setup(app).limits = limits
    _add_static(app, settings)

    owns_engine = engine is None
    background: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        if ctx.engine is None:
            engine = await build_engine(settings)
            await engine.start()  # EngineError (e.g. no worker reachable) stops the start
            ctx.engine = engine
        await ctx.placement.start()  # Redis unreachable: joins get 503 until it answers
        install_connect_race_handler(asyncio.get_running_loop(), metrics.registry)
        background.append(asyncio.create_task(metrics.monitor_event_loop()))
        background.append(asyncio.create_task(trim_periodically(
            on_trimmed=metrics.memory_trimmed.inc)))
        log.info("sfu started", extra={"engine": type(ctx.engine).__name__})

    async def on_shutdown(app: web.Application) -> None:
        await whip.close()
        await ctx.registry.close()
        await asyncio.gather(*lost_rooms, return_exceptions=True)
        await ctx.placement.close()  # deregister now: the others stop sending joins here
        if ctx.drainer is not None and ctx.drainer.task is not None:
            ctx.drainer.task.cancel()

    async def on_cleanup(app: web.Application) -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if owns_engine and ctx.engine is not None:
            await ctx.engine.close()
            ctx.engine = None

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def _placement_health(ctx: SfuContext) -> dict[str, object]:
    placement = ctx.placement
    return {"kind": type(placement).__name__, "node_id": placement.node_id,
            "url": placement.url, "coordinator": "reachable" if placement.reachable
            else "unreachable", "draining": placement.draining}


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while the engine runs (draining included: the calls go on)."""
    ctx = request.app[CONTEXT]
    engine_ok = ctx.engine is not None
    draining = ctx.drainer is not None and ctx.drainer.draining
    body: dict[str, object] = {
            "status": ("draining" if draining else "ok") if engine_ok else "starting",
            "draining": draining, "placement": _placement_health(ctx),
            "engine": type(ctx.engine).__name__ if engine_ok else None,
            "rooms": ctx.registry.room_count, "participants": ctx.registry.participant_count,
            "subscribers": ctx.registry.subscription_count,
            "uptime_s": round(time.time() - ctx.started_at, 3)}
    workers = getattr(ctx.engine, "workers", None)
    if workers:  # the SFU stays up without them (audio passes through); say which answer
        body["workers"] = {w.address: "connected" if w.connected else "unreachable"
                           for w in workers}
    return web.json_response(body, status=200 if engine_ok else 503)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 only while this node takes new joins (engine up, not draining, the
    coordinator reachable); 503 with the reasons otherwise."""
    ctx = request.app[CONTEXT]
    reasons = []
    if ctx.engine is None:
        reasons.append("starting")
    if ctx.drainer is not None and ctx.drainer.draining:
        reasons.append("draining")
    if not ctx.placement.reachable:
        reasons.append("coordinator_unreachable")
    return web.json_response({"ready": not reasons, "reasons": reasons,
                              "placement": _placement_health(ctx)},
                             status=503 if reasons else 200)


async def metrics_handler(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    sync_live_hops(ctx)
    body = ctx.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


MAX_STATIC_PATH = 1024  # bytes; each part at most 255 (NAME_MAX)


def _plausible_path(name: str) -> bool:
    """False for a path no file of the demo page can have (NUL, a part over 255 bytes...)."""
    raw = name.encode("utf-8", "surrogatepass")
    return (len(raw) <= MAX_STATIC_PATH and b"\x00" not in raw
            and all(len(part) <= 255 for part in raw.split(b"/")))


def _add_static(app: web.Application, settings: Settings) -> None:
    """The demo page: `/` is index.html, other GETs are files under web_dir (JSON 404 else)."""
    root = settings.web_dir.resolve()
    if not (root / "index.html").is_file():
        log.warning("no demo page", extra={"web_dir": str(root)})
        return

    async def serve_file(request: web.Request) -> web.FileResponse:
        name = request.match_info["path"] or "index.html"
        if not _plausible_path(name):
            raise NotFound("no such page", "not_found")
        try:
            target = (root / name).resolve()
            found = target.is_relative_to(root) and target.is_file()
        except (OSError, ValueError):  # what the OS refuses to look up is not a page
            found = False
        if not found:
            raise NotFound(f"no such page: {request.path[:200]}", "not_found")
        return web.FileResponse(target)

    # Registered last; WHIP/WHEP paths stay theirs (a GET there is 405, not a missing page).
    app.router.add_get(r"/{path:(?!whip/|whep/).*}", serve_file)
