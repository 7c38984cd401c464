"""The bypass detector as a stream sees it, and the threads it runs in (off the event loop)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np


class Detector(Protocol):
    """What `denoiser.bypass.BypassDetector` offers: a reason to keep the original, or None."""

    def update(self, hop: np.ndarray) -> str | None: ...


_executor: ThreadPoolExecutor | None = None


def detector_executor() -> ThreadPoolExecutor:
    """The threads every stream's detector runs in, shared (created on first use). Two: the
    detector is numpy on small arrays and mostly holds the GIL, so more would not run faster;
    two let one stream's work start while another's finishes."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bypass-detector")
    return _executor
