"""Shared fixtures: a small phantom dataset written once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodule_bundle.data.phantom import PhantomConfig
from nodule_bundle.data.synth import write_phantom_dataset

SMALL = PhantomConfig(fov_mm=(130.0, 110.0, 70.0), nodules_per_scan=(8, 12))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Four small scans in all three formats, with annotations.csv and datalist.json."""
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, scans=4, seed=7, formats=("nifti", "mhd", "dicom"), cfg=SMALL, workers=1)
    return out


@pytest.fixture(scope="session")
def datalist(phantom_dir) -> dict:
    return json.loads((phantom_dir / "datalist.json").read_text())
