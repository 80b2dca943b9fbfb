"""A study from a PACS, through the bundle, and its DICOM SEG and SR back into the PACS, over DICOMweb
or DIMSE (:mod:`nodule_bundle.apps.pacs_connections`).

``process_study`` retrieves the study (WADO-RS or C-MOVE), writes its instances under ``<out>/<study>/dicom/<series>/``,
runs ``configs/inference.json`` on its CT series with the most slices (the report and the SEG and SR,
:mod:`nodule_bundle.reports.dicom`, in ``<out>/<study>/report/``) and stores the SEG and SR in the PACS
(STOW-RS or C-STORE), in the study they describe. ``watch_pacs`` does so for every study the PACS lists, once:
``<out>/studies.json`` records each (done, with what was stored, or failed, with the error and the
number of attempts); a done study is not processed again, a failed one is retried on the next pass.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pydicom

from nodule_bundle.apps.pacs_connections import Pacs
from nodule_bundle.apps.workflow import run_inference
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import atomic_path, write_json_atomic
from nodule_bundle.reports.dicom import SEG_NAME, SR_NAME, SR_SERIES_DESCRIPTION


def retrieve_ct_series(pacs: Pacs, study_uid: str, folder: Path) -> tuple[str, Path]:
    """Write the study's instances to ``folder/<series uid>/<instance uid>.dcm``; the uid and folder of
    its CT series with the most instances."""
    instances = pacs.retrieve_study(study_uid)
    if not instances:
        raise NoduleBundleError(f"{pacs.name}: the PACS holds no instance of study {study_uid}")
    counts: Counter[str] = Counter()
    for dataset in instances:
        series_dir = folder / str(dataset.SeriesInstanceUID)
        series_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(series_dir / f"{dataset.SOPInstanceUID}.dcm") as tmp:
            dataset.save_as(tmp)
        if getattr(dataset, "Modality", "") == "CT":
            counts[str(dataset.SeriesInstanceUID)] += 1
    if not counts:
        raise NoduleBundleError(f"{pacs.name}: study {study_uid} has no CT series")
    series_uid = counts.most_common(1)[0][0]
    return series_uid, folder / series_uid


def process_study(
    pacs: Pacs, study_uid: str, out: str | Path, model: str | Path | None = None, nodules: str | Path | None = None,
    bundle_root: str | Path | None = None,
) -> dict:  # fmt: skip
    """Retrieve study ``study_uid`` from ``pacs``, report on its CT series (the nodules of the
    ``nodules`` CSV, or those the bundle finds) and store the SEG and SR back.
    Returns the study, the series read, the report's folder and the SOP instance UIDs stored."""
    folder = Path(out) / study_uid
    series_uid, series_dir = retrieve_ct_series(pacs, study_uid, folder / "dicom")
    report = folder / "report"
    run_inference(
        bundle_root, model, quiet=False, image=str(series_dir), nodules=str(nodules) if nodules else None, seriesuid=series_uid,
        output_dir=str(report),
    )  # fmt: skip
    objects = [pydicom.dcmread(report / name) for name in (SEG_NAME, SR_NAME) if (report / name).exists()]
    if objects:
        pacs.store(objects)
    return {"study": study_uid, "series": series_uid, "report": str(report), "stored": [str(ds.SOPInstanceUID) for ds in objects]}


def has_our_report(pacs: Pacs, study_uid: str) -> bool:
    """Whether the study already holds an SR series this bundle wrote (its series description)."""
    return SR_SERIES_DESCRIPTION in pacs.series_descriptions(study_uid, "SR")


def watch_pacs(
    pacs: Pacs, out: str | Path, model: str | Path | None = None, bundle_root: str | Path | None = None, interval_s: float = 30.0,
    passes: int | None = None,
) -> dict:  # fmt: skip
    """Every ``interval_s`` seconds (``passes`` times, or until stopped), process each study the PACS lists
    that ``<out>/studies.json`` does not record as done; returns that record."""
    out = Path(out)
    record_path = out / "studies.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    done_passes = 0
    while passes is None or done_passes < passes:
        for study_uid in pacs.study_uids():
            earlier = record.get(study_uid, {})
            if earlier.get("status") == "done":
                continue
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if has_our_report(pacs, study_uid):  # processed before this record was kept (pacs --study, another out)
                record[study_uid] = {"status": "done", "at": now, "stored": "earlier"}
                write_json_atomic(record_path, record)
                continue
            try:
                done = process_study(pacs, study_uid, out, model, None, bundle_root)
                record[study_uid] = {"status": "done", "at": now, "series": done["series"], "stored": done["stored"]}
            except Exception as exc:  # recorded and retried on the next pass; the watch goes on
                record[study_uid] = {"status": "failed", "at": now, "error": f"{type(exc).__name__}: {exc}", "attempts": earlier.get("attempts", 0) + 1}
            write_json_atomic(record_path, record)
        done_passes += 1
        if passes is None or done_passes < passes:
            time.sleep(interval_s)
    return record
