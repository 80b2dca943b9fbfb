"""Debian's tools the tests run (the validator dciodvfy, headless Chromium): found, or the test skipped
without them, except under CI, where ``.ci/run`` installs them and their absence fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def debian_tool(package: str, *names: str) -> str:
    """The path of one of ``names``, from Debian's ``package``: skipped without it, except under CI."""
    found = next(filter(None, map(shutil.which, names)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install Debian's {package} (.ci/run) for this test")
        pytest.skip(f"{package} is not installed")
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    """The errors dicom3tools' ``dciodvfy`` finds in the DICOM file ``path`` (its warnings left out)."""
    result = subprocess.run([debian_tool("dicom3tools", "dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
