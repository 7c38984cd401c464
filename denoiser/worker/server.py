"""The worker service: one `LocalEngine` served to every SFU node that connects.

Each node holds one TCP connection. Its streams are opened in the shared engine under the
connection's own prefix, so two nodes may use the same stream ids and never meet; all of them
share the engine's ticks, so the hops of every node that arrive together run as one batch.
When a connection ends, for any reason, its streams are closed and their slots freed.

A connection first runs the handshake (`denoiser.worker.handshake`): at most
`max_handshakes` connections may be in it at once (more are closed at once), each within
`handshake_timeout` seconds and small reads. After it, a node that has sent nothing (no TICK,
no PING) for `heartbeat_timeout` seconds is taken for gone, even if its socket never closes (a
machine that vanished, a process frozen): its connection is aborted and its slots freed.

A node that breaks the protocol gets an ERROR message saying why, and its connection (only
its own) is closed. A bad entry that is well formed (samples that are not a whole number of
hops, NaN, an unknown stream) is answered in its RESULT entry; the rest of the TICK runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from denoiser.engine import EngineError, EngineFull
from denoiser.engine.local import LocalEngine
from denoiser.worker import protocol as wire
from denoiser.worker.bulk import decode_bulk_tick
from denoiser.worker.bulk_server import BulkStreams
from denoiser.worker.framing import MessageReader
from denoiser.worker.handshake import FailureLog, HandshakeFailed, accept
from denoiser.worker.limits import HANDSHAKE_TIMEOUT_S, HEARTBEAT_TIMEOUT_S, MAX_HANDSHAKES
from denoiser.worker.protocol import Flags, MessageType, ProtocolError, ResultEntry, Status

log = logging.getLogger(__name__)



@dataclass
class WorkerStats:
    """What the worker has served, for `/metrics` and the tests."""

    connections: int = 0
    connections_open: int = 0
    ticks: int = 0  # TICK messages
    entries: Counter[str] = field(default_factory=Counter)  # RESULT statuses by name
    protocol_errors: int = 0
    unauthorized: int = 0  # handshakes refused for their AUTH (also in protocol_errors)
    handshake_failures: Counter[str] = field(default_factory=Counter)  # by reason
    handshakes_open: int = 0  # connections still in their handshake
    heartbeat_timeouts: int = 0  # nodes dropped for silence


class _Connection:
    """One node's connection and the streams it opened."""

    def __init__(self, number: int, peer: str, writer: asyncio.StreamWriter) -> None:
        self.prefix = f"c{number}/"
        self.peer = peer
        self.writer = writer
        self.node = ""
        self.streams: set[str] = set()
        self.bulk: BulkStreams | None = None  # bulk layout: handle -> slot
        self.heard = 0.0  # loop time of its last message (set once it is authenticated)
        self.dropped = False

    @property
    def bulk_streams(self) -> int:
        return self.bulk.open_count if self.bulk is not None else 0


class WorkerServer:
    """Serve `engine` on `host:port` (port 0 picks a free one; see `port` after `start`)."""

    def __init__(self, engine: LocalEngine, host: str = "127.0.0.1", port: int = 7100,
                 description: str = "", secret: str | None = None, *,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                 max_handshakes: int = MAX_HANDSHAKES) -> None:
        if heartbeat_timeout <= 0 or handshake_timeout <= 0 or max_handshakes < 1:
            raise ValueError("timeouts must be positive and max_handshakes at least 1")
        self.engine = engine
        self.secret = secret or None  # None: any node may connect (a private network)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.handshake_timeout = float(handshake_timeout)
        self.max_handshakes = int(max_handshakes)
        self.host = host
        self.requested_port = port
        self.description = description
        self.stats = WorkerStats()
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._failures = FailureLog()
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the worker is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.requested_port)
        self._watchdog = asyncio.create_task(self._watch(), name="worker-heartbeat")

    async def close(self) -> None:
        """Stop listening and hang up on every node (they pass through until they reconnect)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                conn.writer.close()
            await self._server.wait_closed()

    def welcome(self) -> wire.Welcome:
        engine = self.engine
        return wire.Welcome(engine.sample_rate, engine.hop_size, engine.latency_samples,
                            engine.max_streams, self.description,
                            max(1, round(self.heartbeat_timeout * 1000)))

    async def _watch(self) -> None:
        """Drop every node not heard from for `heartbeat_timeout` (checked 4 times as often)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.025, self.heartbeat_timeout / 4))
            now = loop.time()
            for conn in list(self._connections):
                if conn.heard and now - conn.heard > self.heartbeat_timeout:
                    self.stats.heartbeat_timeouts += 1
                    log.warning("node silent past the heartbeat timeout; dropping it",
                                extra={"node": conn.node, "peer": conn.peer,
                                       "silent_s": round(now - conn.heard, 1),
                                       "streams": len(conn.streams) + conn.bulk_streams})
                    self._drop(conn)
                    conn.writer.transport.abort()  # also if the node stopped reading

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        if self.stats.handshakes_open >= self.max_handshakes:
            # Refused before anything is read or allocated (a flood of strangers).
            self.stats.handshake_failures["too_many_pending"] += 1
            self.stats.protocol_errors += 1
            self._failures.note("too_many_pending", peer,
                                f"{self.max_handshakes} connections already in their handshake")
            writer.transport.abort()
            return
        conn = _Connection(next(self._numbers), peer, writer)
        self.stats.connections += 1
        try:
            if not await self._handshake(conn, reader, writer):
                return
            self._connections.add(conn)
            self.stats.connections_open += 1
            await self._serve_node(conn, reader, writer)
        finally:
            if conn in self._connections:
                self._drop(conn)
            writer.close()
            try:  # a node that does not read its ERROR does not hold this task
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (ConnectionError, TimeoutError):
                writer.transport.abort()

    async def _handshake(self, conn: _Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bool:
        """Run the handshake within its deadline; count, log (rate-limited) and answer
        ERROR on any failure. True once the node is welcomed."""
        self.stats.handshakes_open += 1
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    hello = await accept(reader, writer, self.secret, self.welcome())
            except TimeoutError:
                raise HandshakeFailed("timeout", f"no handshake within "
                                                 f"{self.handshake_timeout:g} s") from None
            except HandshakeFailed:
                raise
            except Exception as exc:  # never an uncounted escape
                log.exception("handshake failed unexpectedly", extra={"peer": conn.peer})
                raise HandshakeFailed("internal", f"{type(exc).__name__}") from None
        except HandshakeFailed as exc:
            self.stats.handshake_failures[exc.reason] += 1
            self.stats.protocol_errors += 1
            if exc.reason == "unauthorized":
                self.stats.unauthorized += 1
            self._failures.note(exc.reason, conn.peer, str(exc))
            if exc.reason == "too_large":
                writer.transport.abort()  # not a byte more of it is read
            elif exc.reason != "closed":
                with contextlib.suppress(ConnectionError, RuntimeError):
                    writer.write(wire.encode_error(str(exc)))
            return False
        finally:
            self.stats.handshakes_open -= 1
        conn.node = hello.node
        conn.heard = asyncio.get_running_loop().time()
        if hello.layout == wire.BULK_LAYOUT:
            conn.bulk = BulkStreams(self.engine, conn.prefix)
        log.info("node connected", extra={"node": conn.node, "peer": conn.peer,
                                          "layout": hello.layout})
        return True

    async def _serve_node(self, conn: _Connection, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        messages = MessageReader.take_over(reader, writer, wire.MAX_PAYLOAD)
        try:
            while True:
                kind, payload = await messages.read()
                conn.heard = loop.time()
                if kind is MessageType.PING:
                    writer.write(wire.encode_ping(wire.decode_ping(payload), MessageType.PONG))
                elif kind is not MessageType.TICK:
                    raise ProtocolError(f"a node may only send TICK or PING after the "
                                        f"handshake, got {kind.name}")
                elif conn.bulk is not None:
                    self.stats.ticks += 1
                    conn.bulk.on_tick(decode_bulk_tick(payload), writer, self.stats.entries)
                else:
                    self._on_tick(conn, writer, *wire.decode_tick(payload))
                await writer.drain()
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("node broke the protocol; closing its connection",
                        extra={"node": conn.node, "peer": conn.peer, "error": str(exc)})
            with contextlib.suppress(ConnectionError):
                writer.write(wire.encode_error(str(exc)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the node went away (or the heartbeat watchdog aborted it)
        log.info("node disconnected", extra={"node": conn.node, "peer": conn.peer})

    def _drop(self, conn: _Connection) -> None:
        if conn.dropped:
            return
        conn.dropped = True
        for stream in conn.streams:  # fails what they still have queued
            self.engine.close_stream(conn.prefix + stream)
        conn.streams.clear()
        if conn.bulk is not None:
            conn.bulk.close_all()
        self._connections.discard(conn)
        self.stats.connections_open -= 1

    def _on_tick(self, conn: _Connection, writer: asyncio.StreamWriter, seq: int,
                 entries: list[wire.TickEntry]) -> None:
        """Queue every entry in the engine now, in order; answer once all of them are done."""
        self.stats.ticks += 1
        outcomes: list[tuple[str, asyncio.Future[np.ndarray] | ResultEntry]] = []
        for entry in entries:
            key = conn.prefix + entry.stream_id
            if entry.flags & Flags.OPEN:
                refused = self._open(conn, entry.stream_id, key)
                if refused is not None:
                    outcomes.append((entry.stream_id, refused))
                    continue
            if entry.samples.size:
                outcomes.append((entry.stream_id, self._submit(conn, entry, key)))
            if entry.flags & Flags.CLOSE:
                conn.streams.discard(entry.stream_id)
                self.engine.close_stream(key)
        if outcomes:
            _Reply(self, conn, writer, seq, outcomes)

    def _submit(self, conn: _Connection, entry: wire.TickEntry, key: str
                ) -> asyncio.Future[np.ndarray] | ResultEntry:
        if entry.stream_id not in conn.streams:
            return ResultEntry(entry.stream_id, Status.UNKNOWN,
                               reason="unknown stream: send OPEN")
        try:
            return self.engine.submit(key, entry.samples)
        except EngineError as exc:
            return ResultEntry(entry.stream_id, Status.ERROR, reason=str(exc))

    def _open(self, conn: _Connection, stream_id: str, key: str) -> ResultEntry | None:
        if stream_id in conn.streams:
            self.engine.close_stream(key)  # OPEN on a live stream starts it afresh
            conn.streams.discard(stream_id)
        try:
            self.engine.open_stream(key)
        except EngineFull as exc:
            return ResultEntry(stream_id, Status.FULL, reason=str(exc))
        except EngineError as exc:
            return ResultEntry(stream_id, Status.ERROR, reason=str(exc))
        conn.streams.add(stream_id)
        return None


class _Reply:
    """The RESULT of one TICK: written when the last of its engine futures is done (a done
    callback each, no task), or never if the connection is gone by then."""

    def __init__(self, server: WorkerServer, conn: _Connection, writer: asyncio.StreamWriter,
                 seq: int, outcomes: list[tuple[str, asyncio.Future[np.ndarray] | ResultEntry]]
                 ) -> None:
        self.server = server
        self.writer = writer
        self.seq = seq
        self.outcomes = outcomes
        futures = [o for _, o in outcomes if isinstance(o, asyncio.Future)]
        self.waiting = len(futures)
        if not futures:
            self._send()
        for future in futures:
            future.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[np.ndarray]) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self._send()

    def _send(self) -> None:
        results = []
        for stream_id, outcome in self.outcomes:
            if isinstance(outcome, ResultEntry):
                results.append(outcome)
            elif outcome.cancelled() or outcome.exception() is not None:
                reason = "cancelled" if outcome.cancelled() else str(outcome.exception())
                results.append(ResultEntry(stream_id, Status.ERROR, reason=reason))
            else:
                results.append(ResultEntry(stream_id, Status.OK, samples=outcome.result()))
        entries = self.server.stats.entries
        for result in results:
            entries[result.status.name.lower()] += 1
        if not self.writer.is_closing():
            self.writer.write(wire.encode_result(self.seq, results))
