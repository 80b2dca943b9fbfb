"""``configs/followup.json``'s work: a prior and a current scan with their reports (``report.json`` of
``inference.json``) compared and written as ``followup.json``, ``followup.csv`` and ``followup.png``.

``followup.json``::

    {"prior": {"image", "seriesuid", "study_date"}, "current": {...}, "interval_days" (null if unknown),
     "registration": {"lung_dice", "scale", "vessel_correlation"},
     "nodules": [...] (:mod:`nodule_bundle.followup.compare`'s rows)}

``followup.png`` shows each nodule's axial view on the prior scan beside the current one (the
prior's cut where the registration carries the current centre, for a new nodule), captioned with
both sizes, the change in mean diameter, the status and the category. For a DICOM current scan whose report has its masks, the
current scan's ``nodule_labels.seg.dcm`` and ``nodule_labels.sr.dcm`` are written again beside them:
each nodule seen before under the prior finding's tracking UID (a PACS and a viewer follow one
finding across studies by it), with its change and volume doubling time.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import write_json_atomic, write_text_atomic
from nodule_bundle.followup.compare import compare_findings
from nodule_bundle.followup.matching import GATE_MM
from nodule_bundle.followup.registration import FollowupError, register
from nodule_bundle.preprocessing.transforms import NoduleCrop
from nodule_bundle.reports.dicom import segment_tracking_uids, write_dicom_report
from nodule_bundle.reports.pictures import nodule_views, write_montage

CSV_COLUMNS = (
    "status", "current_nodule_id", "prior_nodule_id", "prior_mean_diameter_mm", "current_mean_diameter_mm", "mean_diameter_change_mm",
    "prior_volume_mm3", "current_volume_mm3", "volume_change_percent", "vdt_days", "lung_rads_category", "distance_mm",
)  # fmt: skip


def study_date(value: str | None, where: str) -> datetime.date | None:
    """A DICOM StudyDate (``YYYYMMDD``) as a date; ``None`` for none; an error naming ``where`` for another form."""
    if not value:
        return None
    try:
        return datetime.datetime.strptime(str(value), "%Y%m%d").date()
    except ValueError as err:
        raise NoduleBundleError(f"{where}: study date {value!r} is not YYYYMMDD") from err


def _findings(path: str | Path) -> tuple[dict, list[dict]]:
    """The one scan of a ``report.json`` and its nodules; an error names the file otherwise."""
    try:
        report = json.loads(Path(path).read_text())
        scans = report["scans"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NoduleBundleError(f"{path}: not a report.json of this bundle ({err})") from err
    if len(scans) != 1:
        raise NoduleBundleError(f"{path}: a follow-up compares one scan with one, but the report holds {len(scans)} scans")
    return scans[0], list(scans[0]["nodules"])


class FollowupComparison:
    """Compare a prior scan with the current one (see the module docstring). ``loader`` reads a scan
    (:class:`~nodule_bundle.reading.load.LoadCTImaged`); the registration runs on ``spacing_mm``
    grids and nodules pair within ``gate_mm``. A study date not given is taken from the DICOM
    series (StudyDate); without both, the change has no VDT."""

    def __init__(self, loader, gate_mm: float = GATE_MM, spacing_mm: float = 2.0):
        self.loader, self.gate_mm, self.spacing_mm = loader, float(gate_mm), float(spacing_mm)
        self.cropper = NoduleCrop(64, 0.6)

    def __call__(self, prior_image: str, current_image: str, prior_report: str, current_report: str, output_dir: str,
                 prior_date: str | None = None, current_date: str | None = None) -> dict:  # fmt: skip
        images = {name: self.loader({"image": path})["image"] for name, path in (("prior", prior_image), ("current", current_image))}
        identity = {name: image.meta.get("dicom_identity") or {} for name, image in images.items()}
        ids = {identity[name].get("PatientID") for name in images}
        if None not in ids and len(ids) == 2:
            raise FollowupError(f"{prior_image} -> {current_image}: the scans are of two patients (PatientID {' and '.join(sorted(ids))})")
        dates = {
            "prior": study_date(prior_date or identity["prior"].get("StudyDate"), prior_image),
            "current": study_date(current_date or identity["current"].get("StudyDate"), current_image),
        }
        if None not in dates.values() and dates["current"] <= dates["prior"]:
            raise FollowupError(f"{prior_image} -> {current_image}: the prior scan ({dates['prior']}) is not older than the current one ({dates['current']})")
        days = (dates["current"] - dates["prior"]).days if None not in dates.values() else None
        (prior_scan, prior_findings), (current_scan, current_findings) = _findings(prior_report), _findings(current_report)
        registration = register(images["prior"], images["current"], prior_image, current_image, self.spacing_mm)
        rows = compare_findings(registration, prior_findings, current_findings, days, self.gate_mm)
        result = {
            **{name: {"image": str(path), "seriesuid": scan["seriesuid"], "study_date": dates[name].strftime("%Y%m%d") if dates[name] else None}
               for name, path, scan in (("prior", prior_image, prior_scan), ("current", current_image, current_scan))},
            "interval_days": days,
            "registration": {"lung_dice": round(registration.lung_dice, 3), "scale": [round(s, 3) for s in registration.scale],
                             "vessel_correlation": round(registration.vessel_correlation, 3)},
            "nodules": rows,
        }  # fmt: skip
        out = Path(output_dir)
        write_json_atomic(out / "followup.json", result)
        write_text_atomic(out / "followup.csv", _csv(rows))
        self._pictures(out / "followup.png", images, rows, registration)
        if os.path.isdir(current_image) and (Path(current_report).parent / "nodule_labels.nii.gz").is_file():
            self._dicom(out, rows, (prior_report, prior_findings), (current_report, current_scan, current_findings), current_image)
        return result

    @staticmethod
    def _dicom(out: Path, rows: list[dict], prior: tuple, current: tuple, dicom_dir: str) -> None:
        """The current scan's DICOM SEG and SR again, each nodule seen before under the prior finding's
        tracking UID (from the prior's ``nodule_labels.seg.dcm``), with its change and VDT."""
        (prior_report, prior_findings), (current_report, scan, findings) = prior, current
        by_segment = segment_tracking_uids(Path(prior_report).parent)
        prior_uids = {f["nodule_id"]: by_segment[f["label_value"]] for f in prior_findings if f.get("label_value") in by_segment}
        change = {r["current_nodule_id"]: r for r in rows if r["current_nodule_id"] is not None}
        nodules = [{**f, "followup_status": change[f["nodule_id"]]["status"], "vdt_days": change[f["nodule_id"]].get("vdt_days"),
                    **({"tracking_uid": prior_uids[change[f["nodule_id"]]["prior_nodule_id"]]} if change[f["nodule_id"]]["prior_nodule_id"] in prior_uids else {})}
                   for f in findings]  # fmt: skip
        model = json.loads(Path(current_report).read_text())["model"]
        write_dicom_report(Path(current_report).parent, {**scan, "nodules": nodules}, dicom_dir, scan["seriesuid"], model, out=out)

    def _pictures(self, path: Path, images: Mapping[str, MetaTensor], rows: list[dict], registration) -> None:
        """Each nodule's axial view on both scans, side by side (the other scan cut where the
        registration carries the centre, where the nodule has no finding there)."""
        tiles = []
        for row in rows:
            current = row["current"]["center_world_mm"] if row["current"] else registration.prior_to_current([row["prior"]["center_world_mm"]])[0]
            prior = row["prior"]["center_world_mm"] if row["prior"] else registration.current_to_prior([row["current"]["center_world_mm"]])[0]
            views = [self._axial(images[name], centre) for name, centre in (("prior", prior), ("current", current))]
            size = lambda side: f"{row[side]['mean_diameter_mm']:.1f} mm" if row[side] and row[side]["mean_diameter_mm"] else "-"  # noqa: E731
            change = f" ({row['mean_diameter_change_mm']:+.1f})" if row.get("mean_diameter_change_mm") is not None else ""
            caption = f"{_name(row)}: {row['status']}\n{size('prior')} -> {size('current')}{change}, Lung-RADS {row['lung_rads_category'] or '-'}"
            tiles.append((caption, np.concatenate([views[0], np.full((views[0].shape[0], 6, 3), 255, np.uint8), views[1]], axis=1)))
        write_montage(path, tiles, "follow-up: prior (left) and current (right)", columns=3)

    def _axial(self, image: MetaTensor, centre) -> np.ndarray:
        crop = self.cropper(image, np.asarray(centre, dtype=np.float64))
        return nodule_views(torch.cat([crop, torch.zeros_like(crop)]), zoom=2)["axial"]


def _name(row: Mapping) -> str:
    """A row's nodule by its current id, or as the prior's for a nodule gone."""
    return str(row["current_nodule_id"]) if row["current_nodule_id"] is not None else f"prior {row['prior_nodule_id']}"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        sizes = [(r[side] or {}).get(key) for key in ("mean_diameter_mm", "volume_mm3") for side in ("prior", "current")]
        writer.writerow([r["status"], r["current_nodule_id"] or "", r["prior_nodule_id"] or "", sizes[0], sizes[1], r.get("mean_diameter_change_mm", ""),
                         sizes[2], sizes[3], r.get("volume_change_percent", ""), r.get("vdt_days", ""), r["lung_rads_category"] or "", r["distance_mm"] or ""])  # fmt: skip
    return buffer.getvalue()


def format_followup_table(rows: list[dict]) -> str:
    """The comparison as a plain-text table, one nodule a line; "change" is the change in mean diameter
    the status and category were decided on (from the volumes where both are measured)."""
    def size(side: dict | None, key: str, fmt: str) -> str:
        return format(side[key], fmt) if side and side.get(key) is not None else "-"

    lines = [f"{'nodule':<16}{'prior':<10}{'status':<11}{'prior mm':>9}{'now mm':>8}{'change':>8}{'prior mm3':>11}{'now mm3':>10}{'VDT d':>8}  Lung-RADS"]
    for r in rows:
        vdt = "-" if r.get("vdt_days") is None else f"{r['vdt_days']:.0f}"
        change = size(r, "mean_diameter_change_mm", "+.1f")
        lines.append(f"{_name(r):<16}{str(r['prior_nodule_id'] or '-'):<10}{r['status']:<11}{size(r['prior'], 'mean_diameter_mm', '.1f'):>9}"
                     f"{size(r['current'], 'mean_diameter_mm', '.1f'):>8}{change:>8}{size(r['prior'], 'volume_mm3', '.0f'):>11}{size(r['current'], 'volume_mm3', '.0f'):>10}"
                     f"{vdt:>8}  {r['lung_rads_category'] or '-'}")  # fmt: skip
    return "\n".join(lines)
