"""Build glue for what pyproject.toml cannot say: `models/` and `web/` go inside the wheel.

The repository keeps the weights, the bypass classifier and the demo page in `models/` and
`web/` beside the packages (the source of truth, edited there). `package_dir` maps them onto
the data-only packages `denoiser._shipped.models` and `denoiser._shipped.web`, so a wheel (and
`pip install .`) carries them at `denoiser/_shipped/{models,web}/`; nothing is copied or linked
in the tree. `denoiser.paths` finds them there through `importlib.resources`, and falls back to
the checkout's own folders when the package runs from a clone (PYTHONPATH or editable install).
"""

from setuptools import find_packages, setup

SHIPPED = {"denoiser._shipped.models": "models", "denoiser._shipped.web": "web"}

setup(
    packages=[*find_packages(include=["sfu", "sfu.*", "denoiser", "denoiser.*"]), *SHIPPED],
    package_dir=SHIPPED,
    package_data={
        # Run-time files only: every checkpoint, the bypass classifier and the model card
        # (its licence notes); not the training logs or plans.
        "denoiser._shipped.models": ["*.pt", "bypass_classifier.*", "MODEL_CARD.md"],
        "denoiser._shipped.web": ["*"],
        "denoiser": ["**/*.json"],
    },
)
