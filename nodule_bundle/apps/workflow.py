"""Run the bundle's configs in-process, exactly as ``python -m monai.bundle run`` would; inference with
checked weights, as every application runs it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigWorkflow

from nodule_bundle.core.errors import NoduleBundleError

#: The repository root is the bundle root: it holds ``configs/``.
DEFAULT_BUNDLE_ROOT = Path(__file__).resolve().parents[2]


def find_bundle_root(bundle_root: str | os.PathLike | None = None) -> Path:
    """The bundle root to use (``bundle_root``, else ``$NODULE_BUNDLE_ROOT``, else this checkout)."""
    root = Path(bundle_root or os.environ.get("NODULE_BUNDLE_ROOT") or DEFAULT_BUNDLE_ROOT)
    if not (root / "configs" / "metadata.json").is_file():
        raise NoduleBundleError(f"{root}: not a bundle root (no configs/metadata.json); pass --bundle-root")
    return root


def run_bundle(
    config_names: Sequence[str],
    bundle_root: str | os.PathLike | None = None,
    logging_file: bool = False,
    **override,
) -> ConfigWorkflow:
    """Initialise, run and finalise ``configs/<name>.json`` files merged left to right; returns the workflow.

    ``override`` holds config ids as keyword arguments (``epochs=2``); use ``#`` ids through ``**{...}``.
    ``bundle_root`` is passed on as the ``bundle_root`` config value.
    """
    root = find_bundle_root(bundle_root)
    configs = [str(root / "configs" / f"{name}.json") for name in config_names]
    workflow = ConfigWorkflow(
        config_file=configs if len(configs) > 1 else configs[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf") if logging_file else False,
        workflow_type=None,
        bundle_root=str(root),
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def model_weights(model: str | os.PathLike | None, bundle_root: Path) -> Path:
    """The weights file ``model`` names (a file, or ``model.pt`` in a folder); the bundle's own
    ``models/model.pt`` without one. An error names it when it is not there."""
    path = Path(model) if model else bundle_root / "models"
    path = path / "model.pt" if path.is_dir() else path
    if not path.is_file():
        raise NoduleBundleError(f"{path}: model weights not found (train first, or pass --model)")
    return path


def run_inference(bundle_root: str | os.PathLike | None = None, model: str | os.PathLike | None = None, quiet: bool = True, **override) -> ConfigWorkflow:
    """``configs/inference.json`` with the weights ``model`` (see :func:`model_weights`) and config
    ``override`` (``image``, ``nodules``, ``output_dir``...). ``quiet`` silences the engines' logs while
    it runs: they log every failure with a traceback, and the caller reports it in one line."""
    root = find_bundle_root(bundle_root)
    weights = model_weights(model, root)
    if quiet:
        logging.disable(logging.CRITICAL)
    try:
        return run_bundle(["inference"], root, ckpt_path=str(weights), **override)
    finally:
        if quiet:
            logging.disable(logging.NOTSET)
