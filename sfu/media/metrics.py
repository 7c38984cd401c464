"""The Prometheus series the audio path writes, on the SFU's own registry.

`SpeakerPipeline` takes the SFU's `sfu.metrics.Metrics` and uses its `server_latency`
histogram (RTP packet received -> encoded packet handed to the senders) and its
`frames_dropped{reason}` counter. Everything else that goes in or out (frames, hops, packets)
is counted in `denoise_sfu_media_events_total{event}`, added here to the same registry once.
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
)
#: Values of the `reason` label the audio path uses on `denoise_sfu_frames_dropped_total`.
DROP_REASONS = ("input_late", "input_bad", "subscriber_queue")


class MetricsLike(Protocol):
    """What the pipeline needs of `sfu.metrics.Metrics`."""

    registry: CollectorRegistry
    server_latency: Histogram
    frames_dropped: Counter


_events: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def media_events(registry: CollectorRegistry) -> Counter:
    """The `denoise_sfu_media_events_total{event}` counter of `registry` (created once)."""
    with _lock:
        counter = _events.get(registry)
        if counter is None:
            counter = Counter("denoise_sfu_media_events", "Frames, hops and packets through "
                              "the SFU audio path, by event", ["event"], registry=registry)
            for event in MEDIA_EVENTS:
                counter.labels(event=event)
            _events[registry] = counter
        return counter
