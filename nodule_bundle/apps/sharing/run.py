"""``nodule-bundle run``: run a received bundle's workflow only once it passes ``verify``.

A MONAI bundle's configs are code: every ``$`` expression is Python that ``monai.bundle run``
evaluates. A bundle from another site is therefore untrusted until ``verify`` has checked that it is
the bundle its manifest describes; one that fails runs only when the user says ``--trust``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nodule_bundle.apps.sharing.verify import verify_bundle_dir
from nodule_bundle.core.errors import NoduleBundleError


class UntrustedBundleError(NoduleBundleError):
    """A received bundle that failed verification, run without ``--trust``."""


def run_received_bundle(bundle: str | os.PathLike, configs: Sequence[str], overrides: Sequence[str] = (), trust: bool = False) -> int:
    """``python -m monai.bundle run`` of ``configs`` (names under ``configs/``, merged left to right)
    in the bundle folder ``bundle``, with ``overrides`` (``--key value`` ...) passed on; returns its
    exit status. Verification runs first; a failure stops here unless ``trust``."""
    root = Path(bundle)
    if not root.is_dir():
        raise NoduleBundleError(f"{root}: not a bundle folder (a .zip: check it with `nodule-bundle verify`, then unzip it)")
    failed = [c for c in verify_bundle_dir(root) if not c.ok]
    if failed and not trust:
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in failed[:3])
        raise UntrustedBundleError(
            f"{root}: failed verification ({reasons}); its configs are Python and were not run. "
            "See `nodule-bundle verify`; pass --trust to run it anyway"
        )
    for check in failed:
        print(f"nodule-bundle: warning: running an unverified bundle (--trust): {check.name}: {check.detail}", file=sys.stderr)
    files = [str(root / "configs" / f"{name}.json") for name in configs]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files[0] if len(files) == 1 else str(files),
               "--meta_file", str(root / "configs" / "metadata.json"), "--bundle_root", str(root), *overrides]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the bundle's own code, from its folder
    return subprocess.run(command, cwd=root, env=env).returncode
