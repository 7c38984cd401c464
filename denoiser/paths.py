"""Where the shipped files live: `models/` and `web/` sit beside the packages in the repository."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = Path(os.environ.get("DENOISE_SFU_MODELS_DIR", REPO_ROOT / "models"))
WEB_DIR = REPO_ROOT / "web"
SHARED_DATA_DIR = Path(os.environ.get("DENOISE_SFU_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
