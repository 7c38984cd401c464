"""Keep music, call-progress tones, DTMF and other sustained tones out of the denoiser.

`BypassDetector(sample_rate=48000, hop_size=480).update(hop)` returns the reason to pass a hop
through untouched ("dtmf", "call_progress", "tone", "music") or None to denoise it;
`decode_dtmf(audio, sr)` is a standalone Q.24 DTMF decoder. See docs/bypass.md.
"""

from denoiser.bypass.detector import REASONS, BypassDetector
from denoiser.bypass.dtmf import decode_dtmf

__all__ = ["REASONS", "BypassDetector", "decode_dtmf"]
