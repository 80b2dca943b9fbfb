"""LUNA16 -> a MONAI datalist whose ten subsets are the cross-validation folds.

LUNA16 layout (``--root``)::

    subset0/ ... subset9/<seriesuid>.mhd|.raw    the scans; subset k is fold k
    annotations.csv                              seriesuid,coordX,coordY,coordZ,diameter_mm (world mm)
    candidates_V2.csv                            seriesuid,coordX,coordY,coordZ,class (optional)

Nodules carry ``diameter_mm`` and no malignancy (LUNA16 has none), so they train the size heads only;
the loss masks the malignancy head for them. With ``candidates``, up to ``negatives_per_scan``
class-0 candidates per scan (vessels, airway walls, scars) become ``is_nodule: 0`` items with no
size and no malignancy, which train the network's nodule-vs-not head; class-1 candidates repeat the annotated nodules
and are not added twice.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import write_json_atomic
from nodule_bundle.core.nodule import Nodule
from nodule_bundle.data.datalist import build_datalist_from_folds, nodule_item, relative_image_path
from nodule_bundle.data.nodule_csv import LUNA16_COLUMNS, NoduleListError, read_nodule_csv

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")


class DatasetLayoutError(NoduleBundleError):
    """A dataset folder that is not laid out as the converter expects."""


def find_luna16_scans(root: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """``{seriesuid: .mhd path}`` and ``{seriesuid: fold}`` from the ``subset<k>`` folders."""
    scans, folds = {}, {}
    subsets = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"subset\d+", p.name))
    if not subsets:
        raise DatasetLayoutError(f"{root}: no subset0..subset9 folders (is this the LUNA16 root?)")
    for subset in subsets:
        for mhd in sorted(subset.glob("*.mhd")):
            scans[mhd.stem], folds[mhd.stem] = mhd, int(subset.name[len("subset") :])
    if not scans:
        raise DatasetLayoutError(f"{root}: no .mhd scans in {', '.join(p.name for p in subsets)}")
    return scans, folds


def read_candidates(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """Class-0 (non-nodule) candidate centres per series from ``candidates_V2.csv``."""
    negatives: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CANDIDATE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise NoduleListError(f"{path}: missing column(s) {', '.join(missing)}")
        for row_no, row in enumerate(reader, start=2):
            try:
                label, center = int(row["class"]), tuple(float(row[c]) for c in CANDIDATE_COLUMNS[1:4])
            except (TypeError, ValueError):
                raise NoduleListError(f"{path}: row {row_no}: coordX/Y/Z and class must be numbers") from None
            if label == 0:
                negatives[row["seriesuid"]].append(center)  # type: ignore[arg-type]
    return negatives


def convert_luna16(
    root: str | Path,
    out: str | Path,
    candidates: str | Path | None = None,
    negatives_per_scan: int = 20,
    val_fold: int = 8,
    test_fold: int | None = 9,
    seed: int = 0,
) -> dict:
    """Write the datalist ``out`` (image paths relative to ``root``); returns it.

    Annotated scans that are not on disk (a partial download) are skipped with a warning.
    """
    root, out = Path(root), Path(out)
    scans, folds = find_luna16_scans(root)
    annotations = root / "annotations.csv"
    nodules = read_nodule_csv(annotations)
    header = annotations.read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    if [c.strip() for c in header[:5]] != list(LUNA16_COLUMNS):
        raise NoduleListError(f"{annotations}: expected LUNA16 columns {','.join(LUNA16_COLUMNS)}")
    by_scan: dict[str, list[dict]] = defaultdict(list)
    absent: set[str] = set()
    for nodule in nodules:
        if nodule.seriesuid not in scans:
            absent.add(nodule.seriesuid)
            continue
        n = len(by_scan[nodule.seriesuid]) + 1
        record = Nodule(f"{nodule.seriesuid}-{n}", nodule.seriesuid, nodule.center_world_mm, nodule.diameter_mm)
        by_scan[nodule.seriesuid].append({**nodule_item(relative_image_path(scans[nodule.seriesuid], root), record), "is_nodule": 1})
    if candidates is not None:
        rng = np.random.default_rng(seed)
        for uid, centers in read_candidates(Path(candidates)).items():
            if uid not in scans:
                continue
            chosen = rng.permutation(len(centers))[:negatives_per_scan]
            for k in sorted(chosen):
                record = Nodule(f"{uid}-c{k}", uid, centers[k], float("nan"))
                by_scan[uid].append({**nodule_item(relative_image_path(scans[uid], root), record), "is_nodule": 0})
    if absent:
        warnings.warn(f"{annotations}: skipped {len(absent)} annotated scan(s) not found under {root}", stacklevel=2)
    if not by_scan:
        raise DatasetLayoutError(f"{root}: none of the scans in {annotations.name} is in the subset folders")
    datalist = build_datalist_from_folds(
        by_scan, {uid: folds[uid] for uid in by_scan}, val_fold, test_fold,
        description="LUNA16 (subsets as folds; sizes only, no malignancy)", source=str(root.name),
    )  # fmt: skip
    write_json_atomic(out, datalist)
    return datalist
