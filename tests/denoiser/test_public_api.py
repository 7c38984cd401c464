"""The package's public face: the names a library user imports, without loading torch early."""

from __future__ import annotations

import subprocess
import sys

import pytest

import denoiser


@pytest.mark.parametrize("name", denoiser.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(denoiser, name) is not None


def test_all_lists_exactly_the_lazy_exports() -> None:
    assert sorted(denoiser.__all__) == sorted(denoiser._EXPORTS)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = denoiser.no_such_name  # type: ignore[attr-defined]


def test_light_modules_do_not_load_torch() -> None:
    """`sfu.settings` imports `denoiser.worker.address`; neither may pull in torch."""
    code = ("import sys, denoiser, denoiser.worker.address, sfu.settings; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
