"""The Prometheus series the audio path writes (registered on the SFU's registry).

`SpeakerPipeline` needs an object with two attributes, `server_added_latency` (Histogram,
seconds) and `media_events` (Counter labelled `event`). `MediaMetrics` builds both on a given
registry; `sfu.metrics.Metrics` can hold one, or expose the same two attributes itself.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                   0.1, 0.2, 0.5, 1.0)

#: Values of the `event` label of `denoise_sfu_media_events_total`.
MEDIA_EVENTS = (
    "frame_in",          # decoded frame taken from a publisher's track
    "frame_late",        # decoded frame older than the timeline (dropped)
    "frame_bad",         # frame that could not be converted (dropped)
    "hop_in",            # 10 ms hop cut from the input and sent to the denoiser
    "hop_concealed",     # hop of silence standing in for lost packets (<= 100 ms gaps)
    "hop_stream_error",  # hop whose DenoisedStream raised: the original went out instead
    "publisher_pause",   # gap > 100 ms: nothing sent, timestamps jump over it
    "packet_out",        # denoised packet handed to the subscribers' senders
    "raw_packet_out",    # undenoised comparison packet handed to senders
    "subscriber_drop",   # packet dropped from a slow subscriber's queue (oldest first)
)


class MediaMetricsLike(Protocol):
    server_added_latency: Histogram
    media_events: Counter


class MediaMetrics:
    """The audio path's series on `registry` (a fresh private one if None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.server_added_latency = Histogram(
            "denoise_sfu_server_added_latency_seconds",
            "RTP packet received to encoded packet handed to the subscribers' senders",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.media_events = Counter(
            "denoise_sfu_media_events_total",
            "Frames, hops and packets through the SFU audio path, by event",
            ["event"], registry=self.registry)
        for event in MEDIA_EVENTS:
            self.media_events.labels(event=event)
