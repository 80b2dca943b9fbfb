"""Find a dataset's scans by series UID: image files by their name, DICOM series by their headers."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from nodule_bundle.reading.dicom_series import DicomSeriesError, read_slice_header

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".nrrd")


def scan_stem(path: Path) -> str:
    """The scan name of an image file (``1.3.6...mhd`` -> ``1.3.6...``), as LUNA16 names scans."""
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def index_images(root: str | Path) -> dict[str, Path]:
    """``{series uid: path}`` for every scan under ``root`` (recursively).

    Image files (NIfTI, MHD, NRRD) are keyed by their name without suffix; a directory of DICOM
    files by the SeriesInstanceUID of its first DICOM file, and by its own name, so that a CSV may
    name either. The first path found for a key wins.
    """
    root = Path(root)
    index: dict[str, Path] = {}
    for directory, subdirs, names in tqdm(os.walk(root), desc=f"indexing {root}", unit="folder", disable=None):
        subdirs.sort()
        dicom_uid = None
        for name in sorted(names):
            path = Path(directory) / name
            if name.endswith(IMAGE_SUFFIXES):
                index.setdefault(scan_stem(path), path)
            elif dicom_uid is None and not name.endswith((".raw", ".zraw", ".csv", ".json", ".txt")):
                try:
                    dicom_uid = read_slice_header(path).series_uid
                except (InvalidDicomError, DicomSeriesError, OSError):
                    continue
        if dicom_uid:
            index.setdefault(dicom_uid, Path(directory))
            index.setdefault(Path(directory).name, Path(directory))
    return index
