"""``nodule-bundle synth``: write a synthetic dataset (the phantom, or real nodule geometry) as the bundle reads real ones.

Layout of ``out``::

    images/<seriesuid>.nii.gz      NIfTI (default format)
    mhd/<seriesuid>.mhd|.raw       MHD/raw, as LUNA16 ships scans
    nrrd/<seriesuid>.nrrd          NRRD
    dicom/<seriesuid>/IM*.dcm      a DICOM CT series
    annotations.csv                LUNA16 columns + malignancy, texture, nodule_id and the source's own
                                   (phantom: shape, calcified; real geometry: see real_geometry.py)
    labels/<seriesuid>.nii.gz      the nodules' reference masks (nodule i labelled i + 1)
    candidates.csv                 LUNA16 candidates_V2 columns (class 1 nodules, class 0 the detector's
                                   strongest false candidates: vessels, airway walls, pleura) + score
    followups.csv                  follow-ups only: each patient's scans in time (patient_id, timepoint,
                                   seriesuid, study_date, days since the first)
    datalist.json                  MONAI datalist (training / validation / test, split by scan); the
                                   false candidates are items with ``is_nodule: 0`` and no size or label;
                                   every item names its scan's label map (``mask``) and its value
                                   there (``mask_value``, 0 for a false candidate)

``datalist.json`` is written last, so a dataset without it is incomplete. Until then each finished
scan leaves a record in ``.synth-progress/``: run the same command again and an interrupted run goes
on from the scans it finished (a record is used only for the same version and arguments).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import math
import multiprocessing
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nodule_bundle import __version__
from nodule_bundle.core.io_utils import atomic_path, write_json_atomic, write_text_atomic
from nodule_bundle.core.nodule import Nodule
from nodule_bundle.data.datalist import build_datalist, nodule_item
from nodule_bundle.data.nodule_csv import write_nodule_csv
from nodule_bundle.data.phantom import PhantomConfig, PhantomScan, make_scan
from nodule_bundle.data.writers import write_dicom_series, write_itk_image, write_nifti
from nodule_bundle.detection.candidates import Candidate, detect_candidates

FORMATS = ("nifti", "mhd", "nrrd", "dicom")
PROGRESS_DIR = ".synth-progress"


def _image_path(fmt: str, seriesuid: str) -> str:
    paths = {"nifti": "images/{}.nii.gz", "mhd": "mhd/{}.mhd", "nrrd": "nrrd/{}.nrrd", "dicom": "dicom/{}"}
    return paths[fmt].format(seriesuid)


def _record_path(out: Path, index: int) -> Path:
    return out / PROGRESS_DIR / f"scan-{index:05d}.pkl"


def _task_key(args: tuple, formats: tuple[str, ...], negatives_per_scan: int) -> str:
    """What decides a scan's files: the bundle version, the renderer's arguments (its seed, index,
    config and, for real geometry, the source outlines), the formats and the negatives kept."""
    return hashlib.sha256(pickle.dumps((__version__, args, formats, negatives_per_scan))).hexdigest()


def _finished_scan(out: Path, index: int, key: str, formats: tuple[str, ...]) -> tuple[PhantomScan, list[Candidate]] | None:
    """The record an earlier run of the same task left, if its files are all there."""
    record = _record_path(out, index)
    if not record.is_file():
        return None
    with record.open("rb") as f:
        saved_key, scan, negatives = pickle.load(f)
    written = [out / _image_path(fmt, scan.seriesuid) for fmt in formats]
    if scan.label_map is not None:
        written.append(out / "labels" / f"{scan.seriesuid}.nii.gz")
    return (scan, negatives) if saved_key == key and all(p.exists() for p in written) else None


def _write_scan(task: tuple[Path, int, Callable[..., PhantomScan], tuple, tuple[str, ...], int]) -> tuple[PhantomScan, list[Candidate]]:
    """Render one scan and write its files, or take an earlier run's (same task, files present).

    Returns the scan without its voxels (the parent holds every scan's record, not its volume) and
    its false candidates; the record is written last, so a scan interrupted halfway is rendered again."""
    out, index, make, args, formats, negatives_per_scan = task
    key = _task_key(args, formats, negatives_per_scan)
    finished = _finished_scan(out, index, key, formats)
    if finished is not None:
        return finished
    torch.set_num_threads(1)
    scan = make(*args)
    writers = {
        "nifti": lambda p: write_nifti(p, scan.volume_hu, scan.affine_lps),
        "mhd": lambda p: write_itk_image(p, scan.volume_hu, scan.affine_lps),
        "nrrd": lambda p: write_itk_image(p, scan.volume_hu, scan.affine_lps),
        "dicom": lambda p: write_dicom_series(p, scan.volume_hu, scan.affine_lps, scan.seriesuid, scan.patient_id or "PHANTOM", scan.study_date or "20260101"),
    }
    for fmt in formats:
        writers[fmt](out / _image_path(fmt, scan.seriesuid))
    if scan.label_map is not None:
        write_nifti(out / "labels" / f"{scan.seriesuid}.nii.gz", scan.label_map, scan.affine_lps)
    negatives = false_candidates(scan, negatives_per_scan) if negatives_per_scan else []
    light = replace(scan, volume_hu=np.empty(0, np.int16), label_map=None if scan.label_map is None else np.empty(0, np.uint8))
    with atomic_path(_record_path(out, index)) as tmp:
        tmp.write_bytes(pickle.dumps((key, light, negatives)))
    return light, negatives


def false_candidates(scan: PhantomScan, limit: int) -> list[Candidate]:
    """The detector's strongest candidates in ``scan`` farther than 2 mm beyond every nodule's radius."""
    image = scan.image()
    nodules = np.array([pn.nodule.center_world_mm for pn in scan.nodules]).reshape(-1, 3)
    reach = np.array([pn.nodule.diameter_mm / 2 + 2.0 for pn in scan.nodules])
    false = [
        c for c in detect_candidates(image)
        if np.all(np.linalg.norm(nodules - np.asarray(c.center_world_mm), axis=1) > reach)
    ]  # fmt: skip
    return false[:limit]


def _followup_rows(scans: Sequence[PhantomScan]) -> str:
    """``followups.csv``: each patient's scans in time (time point, series, date, days since the first)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["patient_id", "timepoint", "seriesuid", "study_date", "days"])
    for patient in sorted({scan.patient_id for scan in scans}):
        series = sorted((scan for scan in scans if scan.patient_id == patient), key=lambda scan: scan.study_date)
        first = datetime.datetime.strptime(series[0].study_date, "%Y%m%d")
        for t, scan in enumerate(series):
            writer.writerow([patient, t, scan.seriesuid, scan.study_date, (datetime.datetime.strptime(scan.study_date, "%Y%m%d") - first).days])
    return buf.getvalue()


def _candidate_rows(scan: PhantomScan, negatives: list[Candidate]) -> list[list]:
    rows = [[scan.seriesuid, *pn.nodule.center_world_mm, 1, ""] for pn in scan.nodules]
    return rows + [[scan.seriesuid, *(round(v, 3) for v in c.center_world_mm), 0, round(c.score, 2)] for c in negatives]


def write_phantom_dataset(
    out: str | Path,
    scans: int,
    seed: int = 0,
    formats: Sequence[str] = ("nifti",),
    cfg: PhantomConfig = PhantomConfig(),
    workers: int | None = None,
    negatives_per_scan: int = 20,
    split_fractions: tuple[float, float] = (0.15, 0.15),
) -> Path:
    """Generate ``scans`` phantom scans into ``out``; returns the path of ``datalist.json``.

    ``negatives_per_scan`` false candidates of the detector per scan become non-nodule items;
    ``split_fractions``: the shares of the scans for validation and test.
    """
    if scans < 1:
        raise ValueError(f"scans must be >= 1, got {scans}")
    return write_synthetic_dataset(
        out, make_scan, [(seed, i, cfg) for i in range(scans)], seed, formats, workers, negatives_per_scan, split_fractions,
        description="nodule-bundle synthetic chest-CT phantom",
        phantom={"seed": seed, "scans": scans, "formats": list(formats), "negatives_per_scan": negatives_per_scan, **asdict(cfg)},
    )  # fmt: skip


def write_followup_dataset(
    out: str | Path, patients: int, timepoints: int, seed: int = 0, formats: Sequence[str] = ("nifti",), cfg: PhantomConfig = PhantomConfig(),
    workers: int | None = None, negatives_per_scan: int = 20,
) -> Path:  # fmt: skip
    """``patients`` phantom patients scanned ``timepoints`` times each (:mod:`~nodule_bundle.data.followup_phantom`)
    into ``out``, split by patient, with ``followups.csv``; returns the path of ``datalist.json``."""
    from nodule_bundle.data.followup_phantom import FollowupConfig, make_followup_scan

    if patients < 1 or timepoints < 2:
        raise ValueError(f"a follow-up dataset needs patients >= 1 and timepoints >= 2, got {patients} and {timepoints}")
    fcfg = FollowupConfig(timepoints=timepoints)
    return write_synthetic_dataset(
        out, make_followup_scan, [(seed, i, t, cfg, fcfg) for i in range(patients) for t in range(timepoints)], seed, formats, workers,
        negatives_per_scan, description="nodule-bundle synthetic chest-CT phantom follow-ups",
        phantom={"seed": seed, "patients": patients, "timepoints": timepoints, "formats": list(formats), **asdict(cfg), **asdict(fcfg)},
    )  # fmt: skip


def write_synthetic_dataset(
    out: str | Path,
    make: Callable[..., PhantomScan],
    scan_args: Sequence[tuple],
    seed: int = 0,
    formats: Sequence[str] = ("nifti",),
    workers: int | None = None,
    negatives_per_scan: int = 20,
    split_fractions: tuple[float, float] = (0.15, 0.15),
    **datalist_fields,
) -> Path:
    """Write the scans ``make(*args)`` for each of ``scan_args`` (on ``workers`` processes; ``make`` a
    module-level function) into ``out`` in the layout of the module docstring; split by patient
    (``PhantomScan.patient_id``, else each scan). Returns the path of ``datalist.json``."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(out, i, make, tuple(args), tuple(formats), negatives_per_scan) for i, args in enumerate(scan_args)]
    workers = workers or min(len(tasks), os.cpu_count() or 1)
    progress = dict(total=len(tasks), desc="synthetic scans", unit="scan", disable=None)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_write_scan, tasks), **progress))
    else:
        results = [_write_scan(t) for t in tqdm(tasks, **progress)]
    image_format = next(f for f in FORMATS if f in formats)
    items: dict[str, list[dict]] = {}
    for scan, negatives in results:
        image = _image_path(image_format, scan.seriesuid)
        mask = {"mask": f"labels/{scan.seriesuid}.nii.gz"} if scan.label_map is not None else None
        items.setdefault(scan.patient_id or scan.seriesuid, []).extend(
            [{**nodule_item(image, sn.nodule), **sn.item_fields(), **({**mask, "mask_value": v} if mask else {})} for v, sn in enumerate(scan.nodules, 1)] + [
                {**nodule_item(image, Nodule(f"{scan.seriesuid[-6:]}-c{k:02d}", scan.seriesuid, c.center_world_mm, math.nan)), "is_nodule": 0,
                 **({**mask, "mask_value": 0} if mask else {})}
                for k, c in enumerate(negatives)
            ]
        )  # fmt: skip
    all_nodules = [sn for scan, _ in results for sn in scan.nodules]
    columns = [sn.csv_columns() for sn in all_nodules]
    names = list(dict.fromkeys(name for row in columns for name in row))
    write_nodule_csv(out / "annotations.csv", [sn.nodule for sn in all_nodules], extra={name: [row.get(name, "") for row in columns] for name in names})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class", "score"])
    writer.writerows(row for scan, negatives in results for row in _candidate_rows(scan, negatives))
    write_text_atomic(out / "candidates.csv", buf.getvalue())
    dated = [scan for scan, _ in results if scan.study_date]
    if dated:
        write_text_atomic(out / "followups.csv", _followup_rows(dated))
    datalist_path = out / "datalist.json"
    write_json_atomic(datalist_path, build_datalist(items, seed, split_fractions, **datalist_fields))
    shutil.rmtree(out / PROGRESS_DIR)
    return datalist_path
