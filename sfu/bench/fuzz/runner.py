"""`denoise-sfu bench fuzz`: the batches, the checks after each, the figures at the end.

1. Start a real `denoise-sfu worker` and a real `denoise-sfu serve --engine workers` on
   127.0.0.1 (`system`), and the live call beside them (`call`: WHIP publisher of real noisy
   speech, mode on, and a WHEP subscriber), then read the baseline: RSS, fds and threads of
   both processes, the server's 5xx count.
2. Run cases in batches (`--batch`, up to `--concurrency` at once), round-robin over the
   targets, until `--cases` or `--seconds`. A case that gets a 5xx (or `internal_error`) is
   printed at once with its replay command.
3. After every batch: both processes alive, /healthz 200 (not draining, the worker
   connected), the server's own 5xx count unchanged but for what the cases saw, and the live
   call still denoised: its subscriber received frames since the last batch, the server
   denoised hops since then, and either at least `MIN_DENOISED_SHARE` of the hops since then
   were denoised (the server's count) or the quietest received blocks sit at least
   `MIN_QUIET_DROP_DB` under the quietest sent ones (raw audio sits at the noise's level).
4. At the end, after the fuzzing stops: wait up to `--settle` seconds for RSS and fds of both
   processes to come back within tolerance of the baseline; then one JSON line.

A crash (a process gone, /healthz silent) prints every case of the batch it happened in.
Replay: `--seed S --targets T --case K` runs case K of target T alone, with all the checks.
Media cases aim at the ports of the run they are in, so their replay aims at the same kind of
port (the same position in the list of the server's media ports), not the same number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfu.auth import issue_token
from sfu.bench.fuzz.call import CallSpec, LiveCall
from sfu.bench.fuzz.cases import Case, FuzzEnv, Outcome, Target
from sfu.bench.fuzz.http_raw import HttpTarget
from sfu.bench.fuzz.json_inputs import JsonTarget
from sfu.bench.fuzz.media import MediaTarget
from sfu.bench.fuzz.sdp import SdpTarget
from sfu.bench.fuzz.split import SplitTarget
from sfu.bench.fuzz.system import (
    LiveSystem,
    ProcStats,
    live_system,
    metric_sum,
    server_5xx,
    server_503,
    udp_ports,
)
from sfu.bench.fuzz.tokens import TokenTarget
from sfu.bench.fuzz.worker_frames import WorkerTarget
from sfu.bench.harness import interface_address

TARGETS = ("sdp", "json", "http", "split", "tokens", "rtp", "worker")
ROOM, PUBLISHER = "live", "speaker"
MIN_QUIET_DROP_DB = 6.0
MIN_DENOISED_SHARE = 0.5
MIN_JUDGED_HOPS = 1000  # 10 s of the call: shorter runs (a replay) say too little of load
CASE_TIMEOUT_S = 30.0
RSS_TOLERANCE_MIB = 32.0
RSS_TOLERANCE_SHARE = 0.10
FD_TOLERANCE = 8
#: Cases before the memory baseline is taken (at most; a tenth of a shorter run). The first
#: cases of each kind import code, fill the allocator's pools and aiortc's caches once; the
#: baseline after them tells that warm-up apart from memory that keeps growing. The cold
#: figures are reported beside it, and fds are judged against the cold start.
WARMUP_CASES = 5000


def make_targets(names: list[str]) -> list[Target]:
    table: dict[str, type] = {"sdp": SdpTarget, "json": JsonTarget, "http": HttpTarget,
                              "split": SplitTarget, "tokens": TokenTarget, "rtp": MediaTarget,
                              "worker": WorkerTarget}
    return [table[name]() for name in names]


async def template_offers(host: str) -> tuple[str, str]:
    """A real aiortc sendonly (WHIP) and recvonly (WHEP) audio offer, candidates included."""
    from aiortc import RTCPeerConnection

    from sfu.bench.harness import ToneTrack

    offers = []
    for direction in ("sendonly", "recvonly"):
        pc = RTCPeerConnection()
        if direction == "sendonly":
            pc.addTransceiver(ToneTrack(), direction="sendonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
        await pc.close()
    return offers[0], offers[1]


@dataclass
class Finding:
    kind: str  # 5xx, expectation, crash, health, live_call, resources, metrics_5xx
    target: str
    seed: int
    case: int | None
    detail: str
    payload: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "target": self.target, "case": self.case,
                               "detail": self.detail[:500]}
        if self.case is not None:
            out["replay"] = (f"denoise-sfu bench fuzz --seed {self.seed} --targets "
                             f"{self.target} --case {self.case}")
        return out


@dataclass
class Tally:
    cases: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    created: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    responses_5xx: int = 0

    def add(self, case: Case, outcome: Outcome | None, error: str | None) -> None:
        self.cases[case.target] = self.cases.get(case.target, 0) + 1
        if outcome is None:
            self.client_errors[error or "?"] = self.client_errors.get(error or "?", 0) + 1
            return
        statuses = self.statuses.setdefault(case.target, {})
        for status in outcome.statuses:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        if outcome.note == "no_answer":
            self.notes["no_answer"] = self.notes.get("no_answer", 0) + 1
        self.created += outcome.created


def _report(finding: Finding) -> None:
    print(f"FAIL {finding.kind} target={finding.target} seed={finding.seed} "
          f"case={finding.case}: {finding.detail[:800]}", flush=True)
    if finding.payload:
        print(f"  payload: {finding.payload}", flush=True)
    if finding.case is not None:
        print(f"  replay: denoise-sfu bench fuzz --seed {finding.seed} --targets "
              f"{finding.target} --case {finding.case}", flush=True)


async def run_case(target: Target, case: Case, env: FuzzEnv, tally: Tally) -> None:
    async with env.semaphore:
        outcome: Outcome | None = None
        error = None
        try:
            outcome = await asyncio.wait_for(target.run(case, env), CASE_TIMEOUT_S)
        except TimeoutError:
            error = "case_timeout"
        except (OSError, asyncio.IncompleteReadError) as err:
            error = type(err).__name__
        except Exception as err:  # aiohttp's client errors: the server hung up on a bad input
            error = type(err).__name__
    tally.add(case, outcome, f"{case.target}:{error}" if error else None)
    if outcome is None:
        return
    if outcome.server_error:
        tally.responses_5xx += 1
        finding = Finding("5xx", case.target, case.seed, case.index,
                          f"{case.what} -> {outcome.server_error}", case.payload_repr())
        tally.findings.append(finding)
        _report(finding)
    if outcome.expectation:
        finding = Finding("expectation", case.target, case.seed, case.index,
                          f"{case.what} -> {outcome.expectation}", case.payload_repr())
        tally.findings.append(finding)
        _report(finding)


def hop_counts(metrics: dict[str, float]) -> dict[str, int]:
    """The server's hop outcomes: denoised, and passed through by reason."""
    out = {"denoised": int(metric_sum(metrics, "denoise_sfu_frames_denoised_total"))}
    for key, value in metrics.items():
        if key.startswith("denoise_sfu_frames_passed_through_total{"):
            out[key.split('"')[1]] = int(value)
    return out


@dataclass
class LiveCheck:
    frames: int = 0
    hops: dict[str, int] = field(default_factory=dict)
    shares: list[float] = field(default_factory=list)
    degraded: int = 0  # batches with under MIN_DENOISED_SHARE denoised (late, under load)
    restarts: int = 0  # live calls lost and started afresh (--keep-going)
    failures: int = 0
    batches: int = 0
    last: dict[str, Any] = field(default_factory=dict)


async def check_batch(system: LiveSystem, call: LiveCall, live: LiveCheck, tally: Tally,
                      batch: list[Case], seed: int, known_5xx: int, min_gap: float) -> bool:
    """The checks after a batch (module docstring); False when the run cannot go on."""
    def fail(kind: str, detail: str) -> None:
        span = f"cases {batch[0].target}:{batch[0].index}..{batch[-1].target}:" \
               f"{batch[-1].index}" if batch else "no cases"
        finding = Finding(kind, batch[-1].target if batch else "-", seed, None,
                          f"{detail} (after the batch of {span})")
        tally.findings.append(finding)
        _report(finding)

    alive = system.alive()
    if not all(alive.values()):
        gone = [k for k, v in alive.items() if not v]
        fail("crash", f"{' and '.join(gone)} exited; last errors: "
             f"{system.error_lines(gone[0])}")
        for case in batch:
            print(f"  suspect: target={case.target} case={case.index} {case.what[:200]} "
                  f"payload={case.payload_repr(300)}", flush=True)
        return False
    health = await system.healthz()
    if health is None:
        fail("health", "/healthz did not answer 200 within 5 s")
        return False
    if health.get("draining"):
        fail("health", "the server is draining")
    workers = health.get("workers") or {}
    if any(v != "connected" for v in workers.values()):
        fail("health", f"the server's worker is {workers}")
    metrics = await system.metrics()
    counted = server_5xx(metrics) - known_5xx
    if counted > tally.responses_5xx:
        fail("metrics_5xx", f"/metrics counts {counted} server errors, the cases saw "
                            f"{tally.responses_5xx}")
        tally.responses_5xx = counted
    await asyncio.sleep(max(0.0, min_gap))
    stats = await call.stats()
    hops = hop_counts(await system.metrics())
    delta = {k: v - live.hops.get(k, 0) for k, v in hops.items()}
    total = sum(delta.values())
    share = delta.get("denoised", 0) / total if total else 0.0
    live.batches += 1
    problems = []
    no_frames = stats["frames"] <= live.frames
    if no_frames:
        problems.append(f"the subscriber received no frame since the last check "
                        f"({stats['frames']} in all)")
    if delta.get("denoised", 0) <= 0 and total != delta.get("late", 0):
        # (a batch of only `late` hops is load, judged over the run; anything else is not)
        problems.append(f"the server denoised no hop since the last check ({delta})")
    if stats["publisher"] != "connected" or stats["subscriber"] != "connected":
        problems.append(f"the live call's peers are {stats['publisher']} (publisher) and "
                        f"{stats['subscriber']} (subscriber)")
    quiet, sent = stats.get("received_quiet_db"), stats["sent_quiet_db"]
    quiet_ok = (quiet is not None and stats["window_frames"] >= 50
                and quiet <= sent - MIN_QUIET_DROP_DB)
    if share < MIN_DENOISED_SHARE and not quiet_ok:
        live.degraded += 1  # late under load (counted by the server), judged over the run
    live.frames, live.hops, live.last = stats["frames"], hops, stats
    live.shares.append(share)
    if problems:
        live.failures += 1
        fail("live_call", "; ".join(problems))
        if stats["publisher"] != "connected" or stats["subscriber"] != "connected" or \
                no_frames:
            for case in sorted(batch, key=lambda c: c.target != "rtp"):
                print(f"  suspect: target={case.target} case={case.index} {case.what[:200]} "
                      f"payload={case.payload_repr(200)}", flush=True)
            return False  # the call is gone: nothing after this batch would be judged
    return True


def new_call(system: LiveSystem, room: str) -> LiveCall:
    return LiveCall(CallSpec(system.base_url, room, PUBLISHER,
                             issue_token(system.secret, room, PUBLISHER, 7200, ("publish",)),
                             issue_token(system.secret, room, "listener", 7200,
                                         ("subscribe",))))


def lag_over(metrics: dict[str, float], seconds: float = 0.1) -> int:
    """Event-loop timer firings of the server later than `seconds` (its lag histogram)."""
    total = metric_sum(metrics, "denoise_sfu_event_loop_lag_seconds_count")
    under = metric_sum(metrics, "denoise_sfu_event_loop_lag_seconds_bucket", le=f"{seconds}")
    return int(total - under)


def within(rss_base: ProcStats, fds_base: ProcStats, now: ProcStats, rss_mib: float,
           fds: int) -> bool:
    """RSS back within tolerance of `rss_base` (the warm baseline) and fds of `fds_base`."""
    limit = rss_base.rss_kib + max(rss_mib * 1024, RSS_TOLERANCE_SHARE * rss_base.rss_kib)
    return now.rss_kib <= limit and now.fds <= fds_base.fds + fds


def warmup_cases(requested: int | None, cases: int) -> int:
    """Cases run before the memory baseline: as asked, else WARMUP_CASES or a tenth of the run."""
    if requested is not None:
        return max(0, min(requested, cases))
    return min(WARMUP_CASES, cases // 10)


async def settle(system: LiveSystem, warm: dict[str, ProcStats], cold: dict[str, ProcStats],
                 seconds: float, rss_mib: float, fds: int) -> tuple[dict[str, ProcStats], float]:
    """Poll until both processes are back within tolerance, or `seconds` pass."""
    began = time.monotonic()
    while True:
        now = system.stats()
        if all(within(warm[k], cold[k], now[k], rss_mib, fds) for k in warm):
            return now, time.monotonic() - began
        if time.monotonic() - began >= seconds:
            return now, time.monotonic() - began
        await asyncio.sleep(1.0)


def plan(targets: list[str], cases: int, start: dict[str, int]) -> list[tuple[str, int]]:
    """`cases` (target, index) pairs, round-robin from each target's next index."""
    out: list[tuple[str, int]] = []
    nxt = dict(start)
    while len(out) < cases:
        for name in targets:
            if len(out) >= cases:
                break
            out.append((name, nxt[name]))
            nxt[name] += 1
    for name, index in out:
        start[name] = max(start[name], index + 1)
    return out


async def _bench(args: argparse.Namespace) -> int:
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    media_host = interface_address()
    if media_host.startswith("127."):
        raise SystemExit("no non-loopback interface: aiortc peers cannot meet")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="denoise-sfu-fuzz-"))
    began = time.monotonic()
    tally = Tally()
    live = LiveCheck()
    targets = {t.name: t for t in make_targets(names)}
    whip_offer, whep_offer = await template_offers(media_host)
    async with live_system(log_dir, media_host, connect_timeout=args.connect_timeout) as system:
        print(f"server {system.base_url} (pid {system.server.pid}), worker "
              f"127.0.0.1:{system.worker_port} (pid {system.worker.proc.pid}), media on "
              f"{media_host}, logs in {log_dir}", flush=True)
        call = new_call(system, ROOM)
        try:
            await call.start()
            await asyncio.sleep(3.0)
            stats0 = await call.stats()
            live.frames = stats0["frames"]
            metrics0 = await system.metrics()
            live.hops = hop_counts(metrics0)
            hops0 = dict(live.hops)
            share_before = hops0.get("denoised", 0) / max(1, sum(hops0.values()))
            known_5xx, known_503 = server_5xx(metrics0), server_503(metrics0)
            logs0 = system.log_errors()
            base = system.stats()
            warm = base
            warmup = warmup_cases(args.warmup, args.cases) if args.case is None else 0
            print(f"cold baseline: server {base['server'].as_dict()}, worker "
                  f"{base['worker'].as_dict()}, live call {stats0}", flush=True)
            live_ports = call.media_ports()
            env = FuzzEnv(system, ROOM, PUBLISHER, whip_offer, whep_offer, list(live_ports),
                          semaphore=asyncio.Semaphore(args.concurrency))
            schedule = [[(name, args.case) for name in names]] if args.case is not None else []
            nxt = dict.fromkeys(names, 0)
            done = 0
            fuzz_began = time.monotonic()
            alive = True
            while alive:
                if args.case is not None:
                    if not schedule:
                        break
                    pairs = schedule.pop()
                else:
                    left = args.cases - done
                    if left <= 0 or time.monotonic() - fuzz_began >= args.seconds:
                        break
                    pairs = plan(names, min(args.batch, left), nxt)
                ports = sorted(set(udp_ports(system.server.pid)) - set(live_ports))
                env.media_targets = list(live_ports) + [p for p in ports
                                                        if p[0] != "127.0.0.1"]
                batch = [Case(name, args.seed, index) for name, index in pairs]
                batch_began = time.monotonic()
                await asyncio.gather(*(run_case(targets[c.target], c, env, tally)
                                       for c in batch))
                done += len(batch)
                if warmup and done >= warmup and warm is base:
                    warm = system.stats()
                    print(f"warm baseline after {done} cases: server "
                          f"{warm['server'].as_dict()}, worker {warm['worker'].as_dict()}",
                          flush=True)
                alive = await check_batch(system, call, live, tally, batch, args.seed,
                                          known_5xx, 0.5 - (time.monotonic() - batch_began))
                if not alive and args.keep_going and all(system.alive().values()) \
                        and await system.healthz() is not None:
                    # The live call was lost (printed above): a fresh one, and go on.
                    await call.stop()
                    live.restarts += 1
                    env.room = f"{ROOM}{live.restarts}"
                    call = new_call(system, env.room)
                    await call.start()
                    await asyncio.sleep(2.0)
                    live_ports = call.media_ports()
                    stats = await call.stats()
                    live.frames, live.hops = stats["frames"], hop_counts(await system.metrics())
                    alive = True
                if live.batches % 10 == 0:
                    now = system.stats()
                    print(f"{done} cases, {time.monotonic() - fuzz_began:.0f} s: server "
                          f"{now['server'].as_dict()}, worker {now['worker'].as_dict()}, "
                          f"live call {live.frames} frames, denoised share "
                          f"{live.shares[-1]:.2f}, {len(tally.findings)} findings", flush=True)
            fuzz_seconds = time.monotonic() - fuzz_began
            end: dict[str, ProcStats] = {}
            settled_s = 0.0
            if alive:
                end, settled_s = await settle(system, warm, base, args.settle,
                                              args.rss_tolerance, FD_TOLERANCE)
                for name in base:
                    if not within(warm[name], base[name], end[name], args.rss_tolerance,
                                  FD_TOLERANCE):
                        finding = Finding("resources", name, args.seed, None,
                                          f"{name} did not come back to its baseline within "
                                          f"{args.settle:.0f} s: cold {base[name].as_dict()}, "
                                          f"warm {warm[name].as_dict()} -> "
                                          f"{end[name].as_dict()}")
                        tally.findings.append(finding)
                        _report(finding)
                metrics1 = await system.metrics()
                final_stats = await call.stats()
            else:
                metrics1, final_stats = metrics0, live.last
            logs1 = system.log_errors() if log_dir.exists() else logs0
        finally:
            await call.stop()
            for target in targets.values():
                close = getattr(target, "close", None)
                if close is not None:
                    close()
    run_hops = {k: v - hops0.get(k, 0) for k, v in hop_counts(metrics1).items()
                if v - hops0.get(k, 0)}
    run_share = run_hops.get("denoised", 0) / max(1, sum(run_hops.values()))
    # Judged against the machine's own state: on a loaded machine the call passes hops through
    # `late` before any fuzzing (counted); the fuzzing must not make that much worse.
    if alive and sum(run_hops.values()) >= MIN_JUDGED_HOPS and \
            run_share < args.min_denoised_share and run_share < 0.5 * share_before:
        finding = Finding("live_call", "-", args.seed, None,
                          f"only {100 * run_share:.0f}% of the live call's hops were denoised "
                          f"over the run ({run_hops}), {100 * share_before:.0f}% before it; "
                          f"--min-denoised-share is {args.min_denoised_share}")
        tally.findings.append(finding)
        _report(finding)
    by_kind: dict[str, int] = {}
    for f in tally.findings:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    summary = {
        "bench": "fuzz", "seed": args.seed, "targets": names,
        "cases": tally.cases, "cases_total": sum(tally.cases.values()),
        "seconds": round(time.monotonic() - began, 1), "fuzz_seconds": round(fuzz_seconds, 1),
        "server_5xx_responses": tally.responses_5xx,
        "server_5xx_metrics": server_5xx(metrics1) - known_5xx,
        "server_503_metrics": server_503(metrics1) - known_503,
        "crashes": by_kind.get("crash", 0), "health_failures": by_kind.get("health", 0),
        "expectation_failures": by_kind.get("expectation", 0),
        "live_call_failures": live.failures, "live_call_frames": final_stats.get("frames"),
        "live_call_checks": live.batches,
        "live_call_hops": run_hops, "live_call_denoised_share": round(run_share, 3),
        "live_call_denoised_share_before": round(share_before, 3),
        "live_call_batches_mostly_late": live.degraded,
        "live_call_restarts": live.restarts,
        "server_event_loop_lag_over_100ms": lag_over(metrics1) - lag_over(metrics0),
        "live_call_quiet_db": {"received": final_stats.get("received_quiet_db"),
                               "sent": final_stats.get("sent_quiet_db")},
        "warmup_cases": warmup if warm is not base else 0,
        "server": {"start": base["server"].as_dict(), "warm": warm["server"].as_dict(),
                   "end": end["server"].as_dict() if end else None},
        "worker": {"start": base["worker"].as_dict(), "warm": warm["worker"].as_dict(),
                   "end": end["worker"].as_dict() if end else None},
        "tolerance": {"rss_mib": args.rss_tolerance, "rss_share": RSS_TOLERANCE_SHARE,
                      "fds": FD_TOLERANCE, "settle_s": args.settle},
        "settled_s": round(settled_s, 1),
        "log_errors": {name: {k: v - logs0[name].get(k, 0) for k, v in logs1[name].items()
                              if v - logs0[name].get(k, 0)} for name in logs0},
        "sessions_created_and_deleted": tally.created,
        "statuses": tally.statuses, "no_answer": tally.notes.get("no_answer", 0),
        "client_side_errors": tally.client_errors,
        "findings": by_kind,
        "findings_list": [f.as_dict() for f in tally.findings[:100]],
        "ok": not tally.findings,
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


def run_bench_fuzz(args: argparse.Namespace) -> int:
    if args.cases < 1 or args.seconds <= 0 or args.batch < 1 or args.concurrency < 1:
        raise SystemExit("--cases, --seconds, --batch and --concurrency must be positive")
    return asyncio.run(_bench(args))


def register_bench_fuzz(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fuzz", help="seeded mutated inputs at a live serve + worker (127.0.0.1), beside a "
                     "live denoised call; checks health, 5xx, memory and fds")
    parser.add_argument("--cases", type=int, default=2000, help="cases in all, at most")
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="fuzzing time, at most (the setup and settle come on top)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--case", type=int, default=None,
                        help="replay: run only case K of each of --targets")
    parser.add_argument("--batch", type=int, default=60, help="cases between two checks")
    parser.add_argument("--concurrency", type=int, default=12, help="cases in flight at once")
    parser.add_argument("--settle", type=float, default=75.0,
                        help="seconds RSS and fds get to come back to the baseline at the end "
                             "(long enough for one of the server's heap trims, each minute)")
    parser.add_argument("--rss-tolerance", type=float, default=RSS_TOLERANCE_MIB,
                        help="MiB over the warm baseline RSS still counted as back (or 10%% "
                             "of it, whichever is more)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"cases before the memory baseline is taken (default "
                             f"{WARMUP_CASES}, or a tenth of a shorter run; fds are judged "
                             f"against the cold start)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="the server's --connect-timeout (sessions that never connect)")
    parser.add_argument("--min-denoised-share", type=float, default=MIN_DENOISED_SHARE,
                        help="share of the live call's hops that must be denoised over the run "
                             "(the rest passed through late: a loaded machine)")
    parser.add_argument("--keep-going", action="store_true",
                        help="when the live call is lost, report it, start a fresh one and "
                             "go on (default: stop there)")
    parser.add_argument("--log-dir", default=None, help="where the processes' logs go")
    parser.set_defaults(func=run_bench_fuzz)
    return parser
