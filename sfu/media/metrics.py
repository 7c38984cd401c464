"""The Prometheus series the audio path writes, on the SFU's own registry.

`SpeakerPipeline` takes the SFU's `sfu.metrics.Metrics` and uses its `server_latency`
histogram (RTP packet received -> encoded packet handed to the senders) and its
`frames_dropped{reason}` counter. Everything else that goes in or out (frames, hops, packets)
is counted in `denoise_sfu_media_events_total{event}`, added here to the same registry once.

Also here (issue 14: every drop counted):
  denoise_sfu_rtp_packets_total{outcome}        every RTP packet a receiver got, by what became
                                                of it (RTP_OUTCOMES)
  denoise_sfu_rtcp_packets_total{outcome}       every RTCP packet (or datagram, when dropped
                                                whole) of a peer, by RTCP_OUTCOMES
  denoise_sfu_pipeline_failures_total{action}   a speaker's pipeline task that raised:
                                                `restarted` (once, in pass-through) or `removed`
                                                (the participant was taken out and told)
  denoise_sfu_udp_datagrams_dropped_total{reason}  datagrams at the media sockets dropped
                                                before DTLS/SRTP (UDP_DROP_REASONS)
  denoise_sfu_peer_connects_aborted_total{reason}  aiortc connect tasks that found their peer
                                                closed under them (sfu.media.connect_race)
`register_media_metrics(registry)` creates them all (and their label values) at app start.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Values of the `event` label of `denoise_sfu_media_events_total`.
MEDIA_EVENTS = (
    "frame_in",          # decoded frame taken from a publisher's track
    "hop_in",            # 10 ms hop cut from the input and sent to the denoiser
    "hop_concealed",     # hop of silence standing in for lost packets (gaps <= 100 ms)
    "hop_stream_error",  # hop whose DenoisedStream raised: the original went out instead
    "publisher_pause",   # gap > 100 ms: nothing sent, timestamps jump over it
    "packet_out",        # denoised packet handed to the subscribers' senders
    "raw_packet_out",    # undenoised comparison packet handed to senders
    "packet_forwarded",  # the publisher's own payload sent on undecoded (mode off)
    "hop_degraded",      # hop sent out original because its pipeline restarted after a failure
    "track_ended",       # a publisher's track ended under a running pipeline (RTCP BYE)
)
#: Values of the `reason` label the audio path uses on `denoise_sfu_frames_dropped_total`.
DROP_REASONS = ("input_late", "input_bad", "subscriber_queue",
                "receive_queue")  # decoded frames nobody took in time (oldest dropped)
#: Values of the `outcome` label of `denoise_sfu_rtp_packets_total`.
RTP_OUTCOMES = (
    "released",            # handed to the decoder (a consumed track)
    "late",                # older than one already released, or a duplicate: dropped
    "missing",             # sequence numbers skipped over (lost on the way, or late later)
    "unread",              # on a track the server does not consume: dropped undecoded
    "decoder_queue_full",  # the decoder thread fell behind: oldest packet dropped
    "ssrc_rejected",       # from one SSRC too many on this receiver: dropped
    "rate_limited",        # beyond the receiver's packet rate (a flood): dropped undecoded
)
#: Values of the `outcome` label of `denoise_sfu_rtcp_packets_total`.
RTCP_OUTCOMES = (
    "handled",        # routed to aiortc's receivers and senders as usual
    "rate_limited",   # a datagram beyond the peer's RTCP rate: dropped unparsed
    "malformed",      # a datagram that does not parse: dropped
    "nack_limited",   # a NACK asking for more retransmissions than the peer's budget: dropped
)
PIPELINE_FAILURE_ACTIONS = ("restarted", "removed")
#: Values of the `reason` label of `denoise_sfu_udp_datagrams_dropped_total` (sfu.media.
#: datagram_guard: before DTLS and SRTP see a datagram).
UDP_DROP_REASONS = (
    "size",            # empty, or over 1,500 bytes
    "malformed_stun",  # looks like STUN, does not parse
    "unknown_source",  # not STUN, from an address ICE does not know for this peer
    "queue_full",      # the peer's DTLS transport fell behind
)
#: Values of the `reason` label of `denoise_sfu_peer_connects_aborted_total`.
CONNECT_ABORT_REASONS = ("closed_during_connect",)


class MetricsLike(Protocol):
    """What the pipeline needs of `sfu.metrics.Metrics`."""

    registry: CollectorRegistry
    server_latency: Histogram
    frames_dropped: Counter


_counters: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Counter]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _counter(registry: CollectorRegistry, name: str, doc: str, label: str,
             values: tuple[str, ...]) -> Counter:
    """The counter `name` of `registry`, created once with every label value at 0."""
    with _lock:
        known = _counters.setdefault(registry, {})
        counter = known.get(name)
        if counter is None:
            counter = Counter(name, doc, [label], registry=registry)
            for value in values:
                counter.labels(value)
            known[name] = counter
        return counter


def media_events(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_media_events_total{event}` counter of `registry` (created once)."""
    return _counter(registry, "denoise_sfu_media_events", "Frames, hops and packets through "
                    "the SFU audio path, by event", "event", MEDIA_EVENTS)


def rtp_packets(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_rtp_packets_total{outcome}` counter of `registry` (created once)."""
    return _counter(registry, "denoise_sfu_rtp_packets", "RTP packets received, by what "
                    "became of them", "outcome", RTP_OUTCOMES)


def rtcp_packets(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_rtcp_packets_total{outcome}` counter of `registry` (created once)."""
    return _counter(registry, "denoise_sfu_rtcp_packets", "RTCP from peers, by what became "
                    "of it", "outcome", RTCP_OUTCOMES)


def pipeline_failures(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_pipeline_failures_total{action}` counter of `registry`."""
    return _counter(registry, "denoise_sfu_pipeline_failures", "Speaker pipeline tasks that "
                    "raised, by what was done", "action", PIPELINE_FAILURE_ACTIONS)


def udp_datagrams_dropped(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_udp_datagrams_dropped_total{reason}` counter of `registry`."""
    return _counter(registry, "denoise_sfu_udp_datagrams_dropped", "UDP datagrams at the "
                    "media sockets dropped before DTLS and SRTP, by reason", "reason",
                    UDP_DROP_REASONS)


def peer_connects_aborted(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_peer_connects_aborted_total{reason}` counter of `registry`."""
    return _counter(registry, "denoise_sfu_peer_connects_aborted", "aiortc connect tasks "
                    "that found their peer connection closed under them", "reason",
                    CONNECT_ABORT_REASONS)


def register_media_metrics(metrics: MetricsLike) -> None:
    """Create every media series on `metrics` (so /metrics shows them at 0 from the start)."""
    media_events(metrics.registry)
    rtp_packets(metrics.registry)
    rtcp_packets(metrics.registry)
    pipeline_failures(metrics.registry)
    udp_datagrams_dropped(metrics.registry)
    peer_connects_aborted(metrics.registry)
    for reason in DROP_REASONS:
        metrics.frames_dropped.labels(reason)
