"""Small DICOM series for the ingestion tests: a phantom block written by the project's writer, then
edited slice by slice with pydicom the way real scanners and PACS exports go wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from nodule_bundle.data.writers import write_dicom_series

SHAPE = (24, 20, 10)
SPACING = (0.8, 0.8, 2.0)


def block(seed: int = 0) -> np.ndarray:
    """A small int16 HU volume with structure (so that misordered slices show)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-1000, 400, SHAPE) // 10 * 10).astype(np.int16)


def axial_affine(origin=(-10.0, 20.0, -50.0)) -> np.ndarray:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = origin
    return aff


def write_series(directory: Path, volume: np.ndarray | None = None, affine: np.ndarray | None = None, uid: str | None = None) -> list[Path]:
    """Write a series; returns its files in slice order."""
    volume = block() if volume is None else volume
    write_dicom_series(directory, volume, axial_affine() if affine is None else affine, uid or generate_uid())
    return sorted(directory.glob("IM*.dcm"))


def edit(path: Path, change: Callable[[pydicom.Dataset], None], new_path: Path | None = None) -> Path:
    """Rewrite one DICOM file after ``change(ds)`` (optionally to a new path)."""
    ds = pydicom.dcmread(path)
    change(ds)
    target = new_path or path
    ds.save_as(target)
    return target


def shift_position(offset_mm: tuple[float, float, float]) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        ds.ImagePositionPatient = [f"{float(v) + d:.4f}" for v, d in zip(ds.ImagePositionPatient, offset_mm)]

    return change


def new_instance(ds: pydicom.Dataset) -> None:
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
