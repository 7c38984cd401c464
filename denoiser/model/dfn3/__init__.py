"""DeepFilterNet3 (Schröter et al., MIT/Apache-2.0) ported to a batched, streaming torch model."""

from denoiser.model.dfn3.config import DFN3Config
from denoiser.model.dfn3.model import DFN3

__all__ = ["DFN3", "DFN3Config"]
