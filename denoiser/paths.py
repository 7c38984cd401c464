"""Where the shipped files live.

`models/` (weights, bypass classifier) and `web/` (the demo page) are edited in the repository,
beside the packages. An installed wheel carries them as `denoiser/_shipped/{models,web}/`
(setup.py maps the folders there), found through `importlib.resources`; running from a checkout
(PYTHONPATH or an editable install), that folder is absent and the checkout's own are used.
`DENOISE_SFU_MODELS_DIR` overrides the models folder, `DENOISE_SFU_DATA_DIR` names the training
corpus (default `../shared/data` beside a checkout).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shipped_dir(name: str) -> Path:
    """The folder `name` (`models` or `web`): the installed package's copy, else the checkout's."""
    packaged = resources.files("denoiser") / "_shipped" / name
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return REPO_ROOT / name


MODELS_DIR = Path(os.environ.get("DENOISE_SFU_MODELS_DIR") or shipped_dir("models"))
WEB_DIR = shipped_dir("web")
SHARED_DATA_DIR = Path(os.environ.get("DENOISE_SFU_DATA_DIR")
                       or REPO_ROOT.parent / "shared" / "data")
