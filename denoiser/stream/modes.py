"""The per-participant modes and the reasons a hop goes out as the original: named once."""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["auto", "on", "off"]
PassReason = Literal["mode_off", "late", "engine_full", "engine_error", "dtmf", "call_progress",
                     "tone", "music"]

MODES: tuple[Mode, ...] = get_args(Mode)
PASS_REASONS: tuple[PassReason, ...] = get_args(PassReason)
