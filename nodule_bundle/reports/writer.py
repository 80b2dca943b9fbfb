"""The report as an ignite handler the inference config attaches: every nodule's finding collected
during the evaluator's run, the report files written when it completes."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine, Events

from nodule_bundle.core.errors import require_yes_no
from nodule_bundle.reports.dicom import write_dicom_report
from nodule_bundle.reports.report import (
    BUNDLE_NAME,
    is_rejected_candidate,
    nodule_finding,
    scan_identity,
    write_report,
    write_scan_pictures,
)


class NoduleReportWriter:
    """Collect every nodule's finding during an evaluator run; write the report when it completes:
    ``report.json``, ``report.csv`` and, per scan, ``report.html``, ``nodules.png`` (montage) and
    ``nodule_labels.nii.gz`` (the masks on the scan's grid), each atomically. A run over several
    scans puts each scan's pictures in ``<output_dir>/<seriesuid>/``. A scan without nodules (its record,
    :func:`~nodule_bundle.evaluation.engine.collate_nodules`) is reported with none; a searched scan
    carries its search's facts (``detection``: lung volume, candidates, a warning when the search
    could not work).

    Args:
        output_dir: where the report goes.
        model_version: the bundle version recorded in the report.
        min_nodule_probability: false-positive reduction: a *detected* candidate whose nodule
            probability is lower goes to the scan's ``rejected_candidates``, not its ``nodules``.
            Nodules given by a list are always reported.
        include_phi: put the patient's name, id, birth date, sex, study date and accession number
            (from DICOM headers) in the report; off by default.
        crop_key: the items' nodule crops (:class:`~nodule_bundle.measuring.transforms.NoduleMeasured`) that
            the pictures and label map are made from; nodules without one are in the table only.
        dicom_objects: for a scan read from a DICOM series, also write the masks as a DICOM SEG and
            the findings as a DICOM SR beside them (:mod:`nodule_bundle.reports.dicom`); for a scan
            without nodules, the SR alone, which says so.
    """

    def __init__(
        self,
        output_dir: str | Path,
        model_version: str | None = None,
        min_nodule_probability: float = 0.5,
        include_phi: bool = False,
        crop_key: str = "measurement_crop",
        dicom_objects: bool = True,
    ):
        self.output_dir, self.model_version = Path(output_dir), model_version
        self.min_nodule_probability = min_nodule_probability
        self.include_phi, self.crop_key = require_yes_no(include_phi, "include_phi"), crop_key
        self.dicom_objects = require_yes_no(dicom_objects, "dicom_objects")
        self._scans: dict[str, dict] = {}
        self._crops: dict[str, dict[str, torch.Tensor]] = {}
        self._meta: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._scans.clear()
        self._crops.clear()
        self._meta.clear()

    def _scan(self, item: dict) -> str:
        """The report's entry for ``item``'s scan, made from its first item (a nodule's or, for a
        scan without nodules, the scan's record); returns its series UID."""
        meta = item["scan_meta"] if "scan_meta" in item else item["image"].meta
        uid = str(item.get("seriesuid") or Path(str(meta["filename_or_obj"])).name)
        if uid not in self._scans:
            detection = {"detection": item["detection"]} if "detection" in item else {}  # a whole-scan search's facts
            self._scans[uid] = {**scan_identity(uid, meta, self.include_phi), **detection, "nodules": []}
            self._meta[uid] = {k: meta[k] for k in ("original_affine", "spatial_shape", "space", "series_uid", "filename_or_obj") if k in meta}
        return uid

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.batch:  # a scan without nodules is one record and no output
            if "scan_meta" in item:
                self._scan(item)
        for item, output in zip(engine.state.batch, engine.state.output):
            uid = self._scan(item)
            finding = nodule_finding(item, output)
            if is_rejected_candidate(finding, self.min_nodule_probability):
                self._scans[uid].setdefault("rejected_candidates", []).append(finding)
            else:
                self._scans[uid]["nodules"].append(finding)
                if self.crop_key in item:
                    self._crops.setdefault(uid, {})[finding["nodule_id"]] = item[self.crop_key]

    def _write(self, engine: Engine) -> None:
        scans = list(self._scans.values())
        for scan in scans:  # the value each nodule has in the label map
            with_crop = [n for n in scan["nodules"] if n["nodule_id"] in self._crops.get(scan["seriesuid"], {})]
            for value, nodule in enumerate(with_crop, start=1):
                nodule["label_value"] = value
        write_report(self.output_dir, scans, self.model_version)
        model = {"name": BUNDLE_NAME, "version": self.model_version}
        for scan in scans:
            folder = self.output_dir if len(scans) == 1 else self.output_dir / scan["seriesuid"]
            meta = self._meta.get(scan["seriesuid"], {})
            write_scan_pictures(folder, scan, self._crops.get(scan["seriesuid"], {}), meta, model)
            if self.dicom_objects and "series_uid" in meta:
                write_dicom_report(folder, scan, meta["filename_or_obj"], meta["series_uid"], model)
