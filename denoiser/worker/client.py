"""`RemoteEngine`: the SFU node's side of the worker, behind the same `Engine` interface.

(Over 400 lines: the connection's life (handshake, reconnect with backoff) and the
per-turn TICK batching it carries are one state machine; the wire format is in `protocol.py`
and `bulk.py`.)

The node keeps one connection to the worker. `process` calls made in the same turn of the
event loop go out together as one TICK message (every stream whose hops are ready at that
moment), and each request resolves from the worker's RESULT for that TICK. A stream's first
entry carries OPEN, so the worker starts it with fresh state; `open_stream` itself only checks
the slots the worker declared and sends nothing.

When the connection is lost, every request in flight fails with `EngineError` (the SFU passes
those hops through and counts them), and the engine reconnects in the background with backoff.
The worker dropped this node's streams with the connection, so every stream starts afresh on
the new one. A worker that comes back with another audio format or latency is refused: the
streams were built for the first one.

Heartbeat: the node sends a PING every quarter of the worker's heartbeat timeout (from its
WELCOME), which keeps the worker from dropping an idle node, and counts the connection lost
when it has heard nothing at all from the worker (no RESULT, no PONG) for that long: a worker
that froze or vanished without closing its socket is failed over like one that crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from denoiser.engine import Engine, EngineError, EngineFull, UnknownStream, validate_hops
from denoiser.engine.stats import Series
from denoiser.worker import protocol as wire
from denoiser.worker.address import parse_address
from denoiser.worker.bulk import MAX_HANDLE, decode_bulk_result, encode_bulk_tick
from denoiser.worker.framing import MessageReader
from denoiser.worker.handshake import greet
from denoiser.worker.protocol import Flags, MessageType, ProtocolError, Status, TickEntry

log = logging.getLogger(__name__)


@dataclass
class RemoteStats:
    """The node's view of its worker: round trips and what went wrong."""

    connects: int = 0
    ticks_sent: int = 0
    hops_sent: int = 0
    round_trip_ms: Series = field(default_factory=Series)  # TICK sent -> its RESULT
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class _Sent:
    started: float
    requests: dict[str, asyncio.Future[np.ndarray]]
    names: dict[int, str] = field(default_factory=dict)  # bulk layout: handle -> stream id


class RemoteEngine(Engine):
    """An engine that runs on a worker (`denoise-sfu worker`) at `address`."""

    def __init__(self, address: str, node: str | None = None, *, connect_timeout: float = 5.0,
                 max_backoff: float = 2.0, secret: str | None = None,
                 layout: int = wire.BULK_LAYOUT, heartbeat_timeout: float | None = None
                 ) -> None:
        self.address = address
        self.secret = secret or None
        self.host, self.port = parse_address(address)
        self.node = node or socket.gethostname()
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.stats = RemoteStats()
        self.layout = layout  # of this node's TICK/RESULT
        # Seconds of silence from the worker that count as lost (None: the worker's own, from
        # its WELCOME).
        self.heartbeat_timeout = heartbeat_timeout
        self._handles: dict[str, int] = {}  # bulk layout: the stream's integer on the wire
        self._free_handles: list[int] = []
        self._handle_of_closed: dict[str, int] = {}  # closed, CLOSE not sent yet
        self.welcome: wire.Welcome | None = None
        self._streams: dict[str, bool] = {}  # stream id -> needs OPEN (fresh on the worker)
        self._outgoing: list[tuple[TickEntry, asyncio.Future[np.ndarray] | None]] = []
        self._outgoing_requests: set[str] = set()  # streams with a request in `_outgoing`
        self._flush_scheduled = False
        self._sent: dict[int, _Sent] = {}
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heard = 0.0  # loop time of the worker's last message
        self._abort_reason: str | None = None  # why the heartbeat hung up, for `_read`
        self._closed = False

    # -- what the SFU reads before streams exist ---------------------------------------------

    def _format(self) -> wire.Welcome:
        if self.welcome is None:
            raise EngineError("the worker has not been reached yet")
        return self.welcome

    @property
    def sample_rate(self) -> int:  # type: ignore[override]
        return self._format().sample_rate

    @property
    def hop_size(self) -> int:  # type: ignore[override]
        return self._format().hop_size

    @property
    def latency_samples(self) -> int:  # type: ignore[override]
        return self._format().latency_samples

    @property
    def connected(self) -> bool:
        return self._writer is not None

    @property
    def live_streams(self) -> int:
        return len(self._streams)

    @property
    def free_slots(self) -> int:
        """The worker's slots this node has not taken (other nodes may hold some of them)."""
        return self._format().max_streams - len(self._streams) if self.welcome else 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (EngineError if the worker cannot be reached in `connect_timeout`)."""
        if self._writer is not None:
            return
        try:
            await self._connect()
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            raise EngineError(f"cannot reach the worker at {self.address}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._reconnect_task, self._reader_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._lost("engine closed")
        self._streams.clear()

    async def _connect(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.connect_timeout)
        try:
            welcome = await asyncio.wait_for(
                greet(reader, writer, self.node, self.secret, self.layout), self.connect_timeout)
            self._check_format(welcome)
        except BaseException:
            writer.close()
            raise
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.welcome = welcome
        self._writer = writer
        self._heard = asyncio.get_running_loop().time()
        self._abort_reason = None
        for stream_id in self._streams:
            self._streams[stream_id] = True  # the worker has no state for them
        self.stats.connects += 1
        messages = MessageReader.take_over(reader, writer, wire.MAX_PAYLOAD)  # before any await
        self._reader_task = asyncio.create_task(self._read(messages), name="worker-reader")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(writer),
                                                   name="worker-heartbeat")
        log.info("connected to worker", extra={"worker": self.address,
                                               "worker_slots": welcome.max_streams,
                                               "worker_model": welcome.description})

    @property
    def heartbeat_s(self) -> float:
        """Seconds of silence after which the worker counts as lost."""
        if self.heartbeat_timeout is not None:
            return self.heartbeat_timeout
        # (At least 0.2 s, whatever a worker announces: the node pings 4 times as often.)
        return max(0.2, self.welcome.heartbeat_ms / 1000) if self.welcome else 5.0

    async def _heartbeat(self, writer: asyncio.StreamWriter) -> None:
        """PING the worker; hang up on it once it has been silent past the timeout."""
        loop = asyncio.get_running_loop()
        token = 0
        while self._writer is writer:
            # Often enough for the worker's timeout and for this side's own.
            worker_s = self.welcome.heartbeat_ms / 1000 if self.welcome else self.heartbeat_s
            await asyncio.sleep(max(0.05, min(self.heartbeat_s, worker_s) / 4))
            if self._writer is not writer:
                return
            silent = loop.time() - self._heard
            if silent > self.heartbeat_s:
                self.stats.errors["heartbeat"] += 1
                self._abort_reason = (f"the worker has been silent for {silent:.1f} s "
                                      f"(heartbeat timeout {self.heartbeat_s:g} s)")
                writer.transport.abort()  # `_read` sees the end and fails over
                return
            token += 1
            writer.write(wire.encode_ping(token))

    def _check_format(self, welcome: wire.Welcome) -> None:
        first = self.welcome
        if first is None:
            return
        now = (welcome.sample_rate, welcome.hop_size, welcome.latency_samples)
        before = (first.sample_rate, first.hop_size, first.latency_samples)
        if now != before:
            raise ProtocolError(f"the worker now runs (rate, hop, latency) {now}, not {before}; "
                                "its streams were set up for the first")

    def reconnect_in_background(self) -> None:
        """Keep trying to connect (with backoff) until it works or the engine is closed."""
        if self._closed or self._writer is not None:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(self._reconnect(),
                                                       name="worker-reconnect")

    async def _reconnect(self) -> None:
        backoff = 0.1
        while not self._closed:
            await asyncio.sleep(backoff)
            try:
                await self._connect()
                return
            except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
                self.stats.errors["connect"] += 1
                if isinstance(exc, wire.VersionMismatch):
                    self.stats.errors["version"] += 1
                log.warning("worker unreachable; retrying",
                            extra={"worker": self.address, "error": str(exc),
                                   "retry_s": min(2 * backoff, self.max_backoff)})
                backoff = min(2 * backoff, self.max_backoff)

    def _lost(self, reason: str) -> None:
        """Fail everything in flight; the worker has dropped this node's streams."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        error = EngineError(reason)
        for sent in self._sent.values():
            for request in sent.requests.values():
                if not request.done():
                    request.set_exception(error)
        self._sent.clear()
        for _, future in self._outgoing:
            if future is not None and not future.done():
                future.set_exception(error)
        self._outgoing.clear()
        self._outgoing_requests.clear()
        self._free_handles.extend(self._handle_of_closed.values())
        self._handle_of_closed.clear()
        for stream_id in self._streams:
            self._streams[stream_id] = True

    async def _read(self, messages: MessageReader) -> None:
        reason = "worker connection lost"
        loop = asyncio.get_running_loop()
        try:
            while True:
                kind, payload = await messages.read()
                self._heard = loop.time()
                if kind is MessageType.RESULT and self.layout == wire.BULK_LAYOUT:
                    self._on_bulk_result(payload)
                elif kind is MessageType.RESULT:
                    self._on_result(*wire.decode_result(payload))
                elif kind is MessageType.PONG:
                    wire.decode_ping(payload)
                elif kind is MessageType.ERROR:
                    reason = f"the worker closed the connection: {wire.decode_error(payload)}"
                    break
                else:
                    raise ProtocolError(f"unexpected {kind.name} from the worker")
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            self.stats.errors["protocol"] += 1
            reason = f"bad message from the worker: {exc}"
        except (asyncio.IncompleteReadError, ConnectionError):
            reason = self._abort_reason or reason
        log.warning("worker connection lost", extra={"worker": self.address, "why": reason})
        self.stats.errors["disconnect"] += 1
        self._lost(reason)
        self.reconnect_in_background()

    def _on_result(self, seq: int, entries: list[wire.ResultEntry]) -> None:
        sent = self._sent.pop(seq, None)
        if sent is None:
            raise ProtocolError(f"RESULT for unknown seq {seq}")
        self.stats.round_trip_ms.add((time.perf_counter() - sent.started) * 1e3)
        for entry in entries:
            self._resolve(sent, seq, entry.stream_id, entry.status, entry.samples, entry.reason)
        self._left_out(sent)

    def _on_bulk_result(self, payload: bytes | memoryview) -> None:
        result = decode_bulk_result(payload)
        sent = self._sent.pop(result.seq, None)
        if sent is None:
            raise ProtocolError(f"RESULT for unknown seq {result.seq}")
        self.stats.round_trip_ms.add((time.perf_counter() - sent.started) * 1e3)
        samples = result.samples.astype(np.float32)  # one copy we own, views per stream
        start, bad = 0, iter(result.reasons)
        for handle, size, code in zip(result.handles.tolist(), result.sizes.tolist(),
                                      result.status.tolist(), strict=True):
            stream_id = sent.names.get(handle)
            if stream_id is None:
                raise ProtocolError(f"RESULT names handle {handle}, not in TICK {result.seq}")
            try:
                status = Status(code)
            except ValueError:
                raise ProtocolError(f"unknown status {code}") from None
            ok = status is Status.OK
            self._resolve(sent, result.seq, stream_id, status,
                          samples[start:start + size] if ok else None,
                          "" if ok else next(bad))
            start += size
        self._left_out(sent)

    def _resolve(self, sent: _Sent, seq: int, stream_id: str, status: Status,
                 samples: np.ndarray | None, reason: str) -> None:
        future = sent.requests.pop(stream_id, None)
        if future is None:
            raise ProtocolError(f"RESULT names stream {stream_id!r}, not in TICK {seq}")
        if future.done():
            return
        if status is Status.OK and samples is not None:
            future.set_result(samples)
            return
        self.stats.errors[status.name.lower()] += 1
        if stream_id in self._streams and status in (Status.FULL, Status.UNKNOWN):
            self._streams[stream_id] = True  # ask for a slot again next time
        if status is Status.FULL:
            future.set_exception(EngineFull(f"worker full: {reason}"))
        elif status is Status.UNKNOWN:
            future.set_exception(UnknownStream(f"unknown stream on the worker: {reason}"))
        else:
            future.set_exception(EngineError(f"worker: {reason}"))

    @staticmethod
    def _left_out(sent: _Sent) -> None:
        for future in sent.requests.values():
            if not future.done():
                future.set_exception(EngineError("the worker's RESULT left this stream out"))

    # -- streams ---------------------------------------------------------------------------

    def open_stream(self, stream_id: str) -> None:
        if self._closed:
            raise EngineError("engine closed")
        if stream_id in self._streams:
            raise EngineError(f"stream {stream_id!r} is already open")
        if not stream_id or len(stream_id.encode()) > wire.MAX_ID_BYTES:
            raise EngineError(f"stream id must be 1-{wire.MAX_ID_BYTES} bytes")
        slots = self._format().max_streams
        if len(self._streams) >= min(slots, MAX_HANDLE):
            raise EngineFull(f"all {slots} stream slots of the worker are in use")
        self._streams[stream_id] = True
        self._handles[stream_id] = self._free_handles.pop() if self._free_handles \
            else len(self._handles)

    def close_stream(self, stream_id: str) -> None:
        fresh = self._streams.pop(stream_id, None)
        if fresh is None:
            return
        handle = self._handles.pop(stream_id)
        if not fresh and self._writer is not None:  # opened on the worker: free it there
            if stream_id in self._outgoing_requests:
                self._flush()  # one entry per stream per TICK
            self._queue(TickEntry(stream_id, Flags.CLOSE, np.zeros(0, np.float32)), None)
            self._handle_of_closed[stream_id] = handle  # until the CLOSE is encoded
        else:
            self._free_handles.append(handle)

    async def process(self, stream_id: str, samples: np.ndarray) -> np.ndarray:
        if self._closed:
            raise EngineError("engine closed")
        fresh = self._streams.get(stream_id)
        if fresh is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        samples = validate_hops(samples, self._format().hop_size)
        if self._writer is None:
            self.stats.errors["not_connected"] += 1
            raise EngineError(f"not connected to the worker at {self.address}")
        if stream_id in self._outgoing_requests:
            # One entry per stream per TICK: the RESULT answers by stream id.
            self._flush()
        self._streams[stream_id] = False
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue(TickEntry(stream_id, Flags.OPEN if fresh else Flags.NONE, samples), future)
        return await future

    def _queue(self, entry: TickEntry, future: asyncio.Future[np.ndarray] | None) -> None:
        self._outgoing.append((entry, future))
        if future is not None:
            self._outgoing_requests.add(entry.stream_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send everything queued in this turn of the event loop as one TICK."""
        self._flush_scheduled = False
        if not self._outgoing:
            return
        outgoing, self._outgoing = self._outgoing, []
        self._outgoing_requests.clear()
        try:
            if self._writer is None:
                for _, future in outgoing:
                    if future is not None and not future.done():
                        future.set_exception(EngineError("worker connection lost"))
                return
            for chunk in _chunks(outgoing):
                self._send(chunk)
        finally:
            self._free_handles.extend(self._handle_of_closed.values())
            self._handle_of_closed.clear()

    def _send(self, outgoing: list[tuple[TickEntry, asyncio.Future[np.ndarray] | None]]
              ) -> None:
        assert self._writer is not None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        entries = [entry for entry, _ in outgoing]
        requests = {entry.stream_id: future for entry, future in outgoing if future is not None}
        names: dict[int, str] = {}
        if self.layout == wire.BULK_LAYOUT:
            handles = [self._handle_of_closed[e.stream_id] if e.flags == Flags.CLOSE
                       else self._handles[e.stream_id] for e in entries]
            names = dict(zip(handles, (entry.stream_id for entry in entries), strict=True))
            message = encode_bulk_tick(
                self._seq, np.array(handles, dtype=np.uint32),
                np.array([e.samples.size for e in entries], dtype=np.uint32),
                np.array([e.flags for e in entries], dtype=np.uint8),
                np.concatenate([e.samples for e in entries]) if entries else
                np.zeros(0, np.float32))
        else:
            message = wire.encode_tick(self._seq, entries)
        if requests:
            self._sent[self._seq] = _Sent(time.perf_counter(), requests, names)
        self._writer.write(message)
        self.stats.ticks_sent += 1
        self.stats.hops_sent += sum(e.samples.size for e in entries) // self._format().hop_size


def _chunks(outgoing: list[tuple[TickEntry, asyncio.Future[np.ndarray] | None]],
            max_bytes: int = wire.MAX_PAYLOAD // 2
            ) -> list[list[tuple[TickEntry, asyncio.Future[np.ndarray] | None]]]:
    """Split one turn's entries into TICKs within the protocol's bounds (usually one)."""
    chunks: list[list[tuple[TickEntry, asyncio.Future[np.ndarray] | None]]] = [[]]
    size = 0
    for item in outgoing:
        entry_bytes = 4 * item[0].samples.size + wire.MAX_ID_BYTES + 8
        if chunks[-1] and (len(chunks[-1]) >= wire.MAX_ENTRIES or size + entry_bytes > max_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += entry_bytes
    return chunks
