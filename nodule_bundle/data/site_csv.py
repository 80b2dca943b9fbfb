"""A site's own scans + a nodule CSV -> a MONAI datalist (the path fine-tuning and evaluation take).

The CSV has LUNA16's columns ``seriesuid,coordX,coordY,coordZ`` (world mm, LPS) and optionally
``diameter_mm``, ``malignancy`` (0/1), ``texture``, ``nodule_id``, the readers' ratings
(:data:`~nodule_bundle.core.nodule.RATING_COLUMNS`, LIDC-IDRI's scales) and either ``split``
(training / validation / test) or ``fold`` (an integer). Scans are found under ``images`` by
``seriesuid`` (a file named ``<seriesuid>.nii.gz|.nii|.mhd|.nrrd``, or a DICOM directory whose
series UID or folder name it is). Whatever labels are present feed the matching heads; missing ones
are masked, never guessed.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

from nodule_bundle.core.io_utils import write_json_atomic
from nodule_bundle.data.datalist import SPLITS, build_datalist, build_datalist_from_folds, nodule_item, relative_image_path
from nodule_bundle.data.nodule_csv import NoduleListError, rating_fields, read_nodule_rows
from nodule_bundle.reading.image_index import index_images


def convert_site_csv(
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    seed: int = 0,
    val_fold: int = 0,
    test_fold: int | None = None,
) -> dict:
    """Write the datalist ``out`` (image paths relative to ``images``); returns it.

    Without ``split`` or ``fold`` columns, scans are split 70/15/15 at random (``seed``). Rows whose
    scan is not found are skipped with a warning that counts them; none found is an error.
    """
    images, annotations = Path(images), Path(annotations)
    rows = read_nodule_rows(annotations)
    if any(not nodule.seriesuid for nodule, _ in rows):
        raise NoduleListError(f"{annotations}: every row needs a seriesuid to find its scan")
    index = index_images(images)
    by_scan: dict[str, list[dict]] = defaultdict(list)
    split_of_scan: dict[str, str] = {}
    fold_of_scan: dict[str, int] = {}
    absent: set[str] = set()
    for row_no, (nodule, row) in enumerate(rows, start=2):
        if nodule.seriesuid not in index:
            absent.add(nodule.seriesuid)
            continue
        uid = nodule.seriesuid
        by_scan[uid].append({**nodule_item(relative_image_path(index[uid], images), nodule), **rating_fields(annotations, row_no, row)})
        if row.get("split"):
            if row["split"] not in SPLITS:
                raise NoduleListError(f"{annotations}: row {row_no}: split must be one of {SPLITS}, got {row['split']!r}")
            _consistent(split_of_scan, uid, row["split"], annotations, row_no, "split")
        if row.get("fold"):
            try:
                fold = int(row["fold"])
            except ValueError:
                raise NoduleListError(f"{annotations}: row {row_no}: fold must be an integer, got {row['fold']!r}") from None
            _consistent(fold_of_scan, uid, fold, annotations, row_no, "fold")
    if absent:
        warnings.warn(f"{annotations}: skipped {len(absent)} series not found under {images}: {sorted(absent)[:3]}", stacklevel=2)
    if not by_scan:
        raise NoduleListError(f"{annotations}: none of its series was found under {images}")
    description = f"site data from {annotations.name}"
    if split_of_scan:
        unsplit = set(by_scan) - set(split_of_scan)
        if unsplit:
            raise NoduleListError(f"{annotations}: the split column is empty for series {sorted(unsplit)[:3]}")
        datalist: dict = {"description": description, **{s: [] for s in SPLITS}}
        for uid, items in by_scan.items():
            datalist[split_of_scan[uid]].extend(items)
    elif fold_of_scan:
        unfolded = set(by_scan) - set(fold_of_scan)
        if unfolded:
            raise NoduleListError(f"{annotations}: the fold column is empty for series {sorted(unfolded)[:3]}")
        datalist = build_datalist_from_folds(by_scan, fold_of_scan, val_fold, test_fold, description=description)
    else:
        datalist = build_datalist(by_scan, seed, description=description)
    write_json_atomic(out, datalist)
    return datalist


def _consistent(assigned: dict, uid: str, value, path: Path, row_no: int, column: str) -> None:
    """A scan belongs to one split or fold: its rows must agree (no nodule-level leakage)."""
    if assigned.setdefault(uid, value) != value:
        raise NoduleListError(f"{path}: row {row_no}: series {uid} is in {column} {assigned[uid]!r} on an earlier row, {value!r} here")
