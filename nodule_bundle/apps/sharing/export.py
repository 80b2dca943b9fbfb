"""``nodule-bundle export``: one self-contained bundle another site runs without our repository.

Layout (the MONAI bundle specification's, plus the code the configs import)::

    configs/            metadata.json, train/evaluate/inference/finetune ... .json, logging.conf
    models/model.pt     the network's state dict (weights only)
    models/model.ts     the same network as TorchScript (MONAI ckpt_export, configs embedded)
    models/calibration.json  the malignancy temperature, when the checkpoint's folder has one
    models/segmenter.pt the learned segmentation's state dict, when the checkpoint's folder has one
    docs/               model card (README.md), its images and data_license.txt
    nodule_bundle/      the runtime the configs import (every stage package, not apps/: the CLI, benchmarks,
                        PACS, Deploy, MONAI Label and federated applications stay home); MONAI puts the
                        bundle root on sys.path
    LICENSE  large_files.yml  manifest.sha256

The bundle is assembled in a temporary folder beside ``out`` and moved (or zipped) into place only
when complete, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

import nodule_bundle
from nodule_bundle.apps.sharing.archive import write_manifest, write_zip
from nodule_bundle.apps.sharing.network_checks import export_torchscript, load_weights
from nodule_bundle.apps.sharing.verify import MAX_FILE_BYTES, config_path_problems
from nodule_bundle.apps.workflow import find_bundle_root
from nodule_bundle.core.checksums import sha256_file
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.evaluation.calibration import load_temperature

CODE_SUFFIXES = (".py", ".json")
APPLICATIONS = "apps"  # nodule_bundle/apps: built on the runtime, never imported by it, not shipped


def export_bundle(
    out: str | os.PathLike, ckpt: str | os.PathLike | None = None, bundle_root: str | os.PathLike | None = None,
    weights_url: str = "",
) -> Path:  # fmt: skip
    """Write the bundle to the directory or ``.zip`` ``out`` (which must not exist); returns ``out``.

    ``ckpt`` defaults to the bundle root's ``models/model.pt``; ``weights_url`` is where
    ``large_files.yml`` says the weights can be downloaded (empty: they travel in the bundle).
    """
    root, out = find_bundle_root(bundle_root), Path(out)
    ckpt = Path(ckpt) if ckpt else root / "models" / "model.pt"
    if out.exists():
        raise NoduleBundleError(f"{out}: already exists; an export never overwrites, choose a new path")
    if not ckpt.is_file():
        raise NoduleBundleError(f"{ckpt}: no trained weights; train first (configs/train.json) or pass --ckpt")
    problems = config_path_problems(root / "configs")
    if problems:
        raise NoduleBundleError(f"{root / 'configs'}: " + "; ".join(problems))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        calibration = ckpt.parent / "calibration.json"
        if calibration.is_file():
            load_temperature(calibration)  # a broken one fails here, naming the file, and does not travel
        segmenter = ckpt.parent / "segmenter.pt"
        learned = load_weights(segmenter) if segmenter.is_file() else None  # a broken one fails here, naming the file
        _assemble(staging, root, load_weights(ckpt), weights_url, calibration if calibration.is_file() else None, learned)
        if out.suffix == ".zip":
            partial = staging.with_suffix(".zip.partial")
            write_zip(staging, partial)
            os.replace(partial, out)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        staging.with_suffix(".zip.partial").unlink(missing_ok=True)
    return out


def _assemble(staging: Path, root: Path, weights: dict, weights_url: str, calibration: Path | None, segmenter: dict | None) -> None:
    configs = staging / "configs"
    configs.mkdir()
    for path in sorted((root / "configs").iterdir()):
        if path.suffix in (".json", ".conf"):
            shutil.copy2(path, configs / path.name)
    docs = root / "bundle" / "docs" if (root / "bundle" / "docs").is_dir() else root / "docs"  # a checkout, or an exported bundle
    shutil.copytree(docs, staging / "docs")
    shutil.copy2(root / "LICENSE", staging / "LICENSE")
    package = Path(nodule_bundle.__file__).parent
    for path in sorted(package.rglob("*")):
        inside = path.relative_to(package).parts
        if path.suffix in CODE_SUFFIXES and "__pycache__" not in inside and inside[0] != APPLICATIONS:
            target = staging / "nodule_bundle" / path.relative_to(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    (staging / "models").mkdir()
    torch.save(weights, staging / "models" / "model.pt")
    export_torchscript(staging, staging / "models" / "model.ts")
    if calibration is not None:
        shutil.copy2(calibration, staging / "models" / "calibration.json")
    if segmenter is not None:
        torch.save(segmenter, staging / "models" / "segmenter.pt")
    large = [
        {"path": f"models/{name}", "url": weights_url and f"{weights_url.rstrip('/')}/{name}",
         "hash_val": sha256_file(staging / "models" / name), "hash_type": "sha256"}
        for name in ("model.pt", "model.ts", *(("segmenter.pt",) if segmenter is not None else ()))
    ]  # fmt: skip
    (staging / "large_files.yml").write_text(yaml.safe_dump({"large_files": large}, sort_keys=False))
    too_big = [p.name for p in staging.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES and p.parent.name != "models"]
    if too_big:
        raise NoduleBundleError(f"{', '.join(too_big)}: over 25 MB; only the weights may be (listed in large_files.yml)")
    write_manifest(staging)
