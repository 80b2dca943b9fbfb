"""Run the bundle the way users do: ``python -m monai.bundle run`` from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def bundle_args(configs: list[str], **overrides) -> list[str]:
    """What follows ``python -m monai.bundle`` to run ``configs`` with ``overrides``."""
    config_file = str([f"configs/{c}.json" for c in configs]) if len(configs) > 1 else f"configs/{configs[0]}.json"
    args = ["run", "--config_file", config_file, "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def monai_bundle_run(configs: list[str], **overrides) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", *bundle_args(configs, **overrides)]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
