"""The worker service: one `LocalEngine` served to every SFU node that connects.

Each node holds one TCP connection. Its streams are opened in the shared engine under the
connection's own prefix, so two nodes may use the same stream ids and never meet; all of them
share the engine's ticks, so the hops of every node that arrive together run as one batch.
When a connection ends, for any reason, its streams are closed and their slots freed.

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
from denoiser.worker.auth import Unauthorized, check_hello_token
from denoiser.worker.bulk import decode_bulk_tick
from denoiser.worker.bulk_server import BulkStreams
from denoiser.worker.protocol import Flags, MessageType, ProtocolError, ResultEntry, Status

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0


@dataclass
class WorkerStats:
    """What the worker has served, for `/metrics` and the tests."""

    connections: int = 0
    connections_open: int = 0
    ticks: int = 0  # TICK messages
    entries: Counter[str] = field(default_factory=Counter)  # RESULT statuses by name
    protocol_errors: int = 0
    unauthorized: int = 0  # HELLOs refused for their token (also counted in protocol_errors)


class _Connection:
    """One node's connection and the streams it opened."""

    def __init__(self, number: int, peer: str, writer: asyncio.StreamWriter) -> None:
        self.prefix = f"c{number}/"
        self.peer = peer
        self.writer = writer
        self.node = ""
        self.streams: set[str] = set()
        self.version = wire.VERSION  # the layout of its TICK/RESULT, chosen by its HELLO
        self.bulk: BulkStreams | None = None  # version 2: handle -> slot


class WorkerServer:
    """Serve `engine` on `host:port` (port 0 picks a free one; see `port` after `start`)."""

    def __init__(self, engine: LocalEngine, host: str = "127.0.0.1", port: int = 7100,
                 description: str = "", secret: str | None = None) -> None:
        self.engine = engine
        self.secret = secret or None  # None: any node may connect (a private network)
        self.host = host
        self.requested_port = port
        self.description = description
        self.stats = WorkerStats()
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the worker is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.requested_port)

    async def close(self) -> None:
        """Stop listening and hang up on every node (they pass through until they reconnect)."""
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                conn.writer.close()
            await self._server.wait_closed()

    def welcome(self) -> wire.Welcome:
        engine = self.engine
        return wire.Welcome(engine.sample_rate, engine.hop_size, engine.latency_samples,
                            engine.max_streams, self.description)

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        conn = _Connection(next(self._numbers), peer, writer)
        self._connections.add(conn)
        self.stats.connections += 1
        self.stats.connections_open += 1
        try:
            version, kind, payload = await asyncio.wait_for(wire.read_versioned(reader),
                                                            HELLO_TIMEOUT)
            if kind is not MessageType.HELLO:
                raise ProtocolError(f"expected HELLO first, got {kind.name}")
            conn.node, token = wire.decode_hello(payload)
            conn.version = version
            if self.secret is not None:
                try:
                    check_hello_token(self.secret, conn.node, token)
                except Unauthorized as exc:
                    self.stats.unauthorized += 1
                    raise ProtocolError(f"unauthorized: {exc}") from None
            writer.write(wire.encode_welcome(self.welcome(), version))
            log.info("node connected", extra={"node": conn.node, "peer": peer,
                                              "protocol": version})
            if version == wire.BULK_VERSION:
                conn.bulk = BulkStreams(self.engine, conn.prefix)
            while True:
                version, kind, payload = await wire.read_versioned(reader)
                if kind is not MessageType.TICK:
                    raise ProtocolError(f"a node may only send TICK after HELLO, got {kind.name}")
                if version != conn.version:
                    raise ProtocolError(f"a TICK of version {version} on a connection of "
                                        f"version {conn.version}")
                if conn.bulk is not None:
                    self.stats.ticks += 1
                    conn.bulk.on_tick(decode_bulk_tick(payload), writer, self.stats.entries)
                else:
                    self._on_tick(conn, writer, *wire.decode_tick(payload))
                await writer.drain()
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("node broke the protocol; closing its connection",
                        extra={"node": conn.node, "peer": peer, "error": str(exc)})
            with contextlib.suppress(ConnectionError):
                writer.write(wire.encode_error(str(exc), conn.version))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the node went away (or never said HELLO)
        finally:
            self._drop(conn)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            log.info("node disconnected", extra={"node": conn.node, "peer": peer})

    def _drop(self, conn: _Connection) -> None:
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
