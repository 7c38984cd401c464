"""One live stream through an engine: the policy (mode, verdict, engine answer, route, count).

`DenoisedStream` is the class callers use per stream; `Mode` and `PassReason` name the modes and
the reasons a hop passes through, once, for the SFU and the metrics alike.
"""

from denoiser.stream.crossfade import CROSSFADES, crossfade_curves
from denoiser.stream.denoised import DenoisedStream
from denoiser.stream.detection import Detector, detector_executor
from denoiser.stream.modes import MODES, PASS_REASONS, Mode, PassReason

__all__ = ["CROSSFADES", "MODES", "PASS_REASONS", "DenoisedStream", "Detector", "Mode",
           "PassReason", "crossfade_curves", "detector_executor"]
