"""What a radiologist reads: per-nodule findings as JSON, CSV and a plain-text table.

``report.json``::

    {"model": {"name", "version"},
     "scans": [{"seriesuid", "image" (file name), "shape": [X, Y, Z], "spacing_mm": [3],
         "patient": {...} (only with include_phi: name, id, birth date, sex, study date, accession),
         "nodules": [
         {"nodule_id", "center_world_mm": [x, y, z] (LPS), "center_voxel": [i, j, k],
          "diameter_mm", "size_band", "size_band_name", "size_band_probabilities": [4],
          "malignancy_probability" (calibrated when the bundle has models/calibration.json),
          "malignancy_uncertainty" (spread of P(malignant) over the flip passes, or null),
          "nodule_probability" (not a vessel, wall or scar),
          "semantic_ratings": {"subtlety", "internal_structure", "calcification", "sphericity", "margin",
              "lobulation", "spiculation"} (the network's estimate of the LIDC-IDRI readers' mean rating,
              on LIDC's scales; null from a model never trained on rated nodules),
          "measured_long_axis_mm", "measured_short_axis_mm", "measured_mean_diameter_mm" (Lung-RADS),
          "measured_volume_mm3", "measured_solid_mean_diameter_mm" (from the nodule's mask; "diameter_mm"
          is the network's regression, a second opinion; null where no mask could be grown),
          "measured_by" ("threshold": the HU threshold segmentation, or "learned": the learned mask,
              used where the bundle has one and its outline is at least learned_mask_min_long_axis_mm long),
          "texture", "texture_source" ("given" by the nodule list, "measured" from the mask, or null),
          "lung_rads_category", "lung_rads_size_source" ("measured" or "network"),
          "label_value" (the nodule's value in nodule_labels.nii.gz),
          "detection_score", "detection_radius_mm" (only for nodules the detector found)}],
      "rejected_candidates": [...] (detected, nodule probability below the threshold)}]}

``report.csv`` has one row per nodule, LUNA16 columns first
(``seriesuid,coordX,coordY,coordZ,diameter_mm``) so it can be scored with LUNA16 tools.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from nodule_bundle.core.io_utils import write_json_atomic, write_text_atomic
from nodule_bundle.core.nodule import RATING_COLUMNS, SIZE_BAND_NAMES, lung_rads_category, size_band, texture_from_measurement
from nodule_bundle.detection.froc import hit_matrix
from nodule_bundle.measuring.measure import MEASUREMENT_KEYS

BUNDLE_NAME = "lung_nodule_ct_classification"
CSV_COLUMNS = (
    "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm",
    "nodule_id", "voxel_i", "voxel_j", "voxel_k", "size_band", "malignancy_probability",
    "measured_mean_diameter_mm", "nodule_probability",
)  # fmt: skip


def _floats(value, ndigits: int) -> list[float]:
    return [round(float(v), ndigits) for v in torch.as_tensor(value).flatten()]


#: Decimals each measured value is reported with: lengths to 0.1 mm (as Lung-RADS v2022 asks, and
#: finer than the voxels they come from), volumes to 1 mm3, detection scores to 0.01.
REPORTED_DECIMALS = {
    "detection_score": 2, "detection_radius_mm": 1, "measured_long_axis_mm": 1, "measured_short_axis_mm": 1,
    "measured_mean_diameter_mm": 1, "measured_volume_mm3": 0, "measured_solid_mean_diameter_mm": 1,
}  # fmt: skip


def _number(value, ndigits: int) -> float | None:
    """A finite float rounded to ``ndigits``, or ``None`` for a value that could not be measured (NaN)."""
    value = float(torch.as_tensor(value).flatten()[0])
    return round(value, ndigits) if math.isfinite(value) else None


def _ratings(values) -> dict[str, float] | None:
    """The rating heads' answers by name, or ``None`` from a network never trained on ratings (NaN)."""
    ratings = _floats(values, 2)
    return None if all(math.isnan(r) for r in ratings) else dict(zip(RATING_COLUMNS, ratings))


def is_rejected_candidate(finding: Mapping, min_nodule_probability: float) -> bool:
    """False-positive reduction: a *detected* candidate the network finds unlikely to be a nodule."""
    return "detection_score" in finding and finding["nodule_probability"] < min_nodule_probability


def nodule_finding(item: Mapping, output: Mapping) -> dict:
    """One nodule's finding from a decollated batch item (its inputs) and output (named heads)."""
    band = int(output["size_band"])
    finding = {
        "nodule_id": str(item.get("nodule_id", "")),
        "center_world_mm": _floats(item["center_world_mm"], 2),
        "center_voxel": _floats(item["center_voxel"], 1),
        "diameter_mm": _floats(output["diameter_mm_pred"], 1)[0],
        "size_band": band,
        "size_band_name": SIZE_BAND_NAMES[band],
        "size_band_probabilities": _floats(output["size_band_probs"], 4),
        "malignancy_probability": _floats(output["malignancy_prob"], 4)[0],
        "nodule_probability": _floats(output["nodule_prob"], 4)[0],
        "malignancy_uncertainty": _floats(output["malignancy_prob_spread"], 4)[0] if "malignancy_prob_spread" in output else None,
        "semantic_ratings": _ratings(output["ratings_pred"]),
        **{key: _number(item[key], REPORTED_DECIMALS[key]) for key in ("detection_score", "detection_radius_mm", *MEASUREMENT_KEYS) if key in item},
        **({"measured_by": str(item["measured_by"])} if "measured_by" in item else {}),
    }
    return finding | lung_rads_fields(finding, str(item.get("texture") or ""))


def lung_rads_fields(finding: Mapping, given_texture: str = "") -> dict:
    """Texture (given, else estimated from the mask) and the Lung-RADS category the size implies,
    from the measured mean diameter (the network's diameter when no mask could be grown)."""
    measured, solid = finding.get("measured_mean_diameter_mm"), finding.get("measured_solid_mean_diameter_mm")
    if given_texture:
        texture, source = given_texture, "given"
    elif measured is not None and solid is not None:
        texture, source = texture_from_measurement(measured, solid), "measured"
    else:
        texture, source = None, None
    size, size_source = (measured, "measured") if measured is not None else (finding["diameter_mm"], "network")
    category = lung_rads_category(texture or "solid", size, solid) if size > 0 else None
    return {"texture": texture, "texture_source": source, "lung_rads_category": category, "lung_rads_size_source": size_source}


#: The report's names for the DICOM identity attributes (``meta["dicom_identity"]``, see
#: :class:`~nodule_bundle.reading.readers.DicomSeriesReader`).
PHI_FIELDS = {
    "PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "birth_date", "PatientSex": "sex",
    "StudyDate": "study_date", "AccessionNumber": "accession_number",
}  # fmt: skip


def scan_identity(uid: str, meta: Mapping, include_phi: bool = False) -> dict:
    """A scan's entry in the report, from its image metadata: series UID, file name, grid; the
    patient's identity (:data:`PHI_FIELDS`) only with ``include_phi``."""
    affine = np.asarray(meta.get("original_affine", np.eye(4)), dtype=np.float64)
    identity = {
        "seriesuid": uid,
        "image": Path(str(meta.get("filename_or_obj", ""))).name,
        "shape": [int(s) for s in np.asarray(meta.get("spatial_shape", []))],
        "spacing_mm": [round(float(v), 4) for v in np.linalg.norm(affine[:3, :3], axis=0)],
    }
    if include_phi:
        found = meta.get("dicom_identity") or {}
        identity["patient"] = {name: found[keyword] for keyword, name in PHI_FIELDS.items() if keyword in found}
    return identity


def write_report(out_dir: str | Path, scans: Sequence[Mapping], model_version: str | None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.csv`` atomically; ``scans`` as in the module docstring."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / "report.json", out_dir / "report.csv"
    write_json_atomic(json_path, {"model": {"name": BUNDLE_NAME, "version": model_version}, "scans": list(scans)})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for scan in scans:
        for n in scan["nodules"]:
            writer.writerow(
                [scan["seriesuid"], *n["center_world_mm"], n["diameter_mm"], n["nodule_id"], *n["center_voxel"],
                 n["size_band_name"], n["malignancy_probability"], n.get("measured_mean_diameter_mm") or "", n["nodule_probability"]]
            )  # fmt: skip
    write_text_atomic(csv_path, buf.getvalue())
    return json_path, csv_path


def write_scan_pictures(out_dir: str | Path, scan: Mapping, crops: Mapping[str, torch.Tensor], scan_meta: Mapping, model: Mapping) -> None:
    """``report.html``, ``nodules.png`` and ``nodule_labels.nii.gz`` for one scan of the report, from
    each reported nodule's crop (``crops[nodule_id]``, see :mod:`nodule_bundle.reports.pictures`)."""
    from nodule_bundle.reports.html import render_report_html
    from nodule_bundle.reports.pictures import nodule_views, png_bytes, write_label_map, write_montage

    out_dir = Path(out_dir)
    with ThreadPoolExecutor(1) as pool:  # the label map (torch, zlib) is written beside the pictures (Pillow)
        label_map = None
        if "original_affine" in scan_meta and "spatial_shape" in scan_meta:
            masks = [crops[n["nodule_id"]] for n in scan["nodules"] if n["nodule_id"] in crops]
            label_map = pool.submit(write_label_map, out_dir / "nodule_labels.nii.gz", masks, scan_meta)
        views = {n["nodule_id"]: nodule_views(crops[n["nodule_id"]]) for n in scan["nodules"] if n["nodule_id"] in crops}
        pngs = {nodule_id: {plane: png_bytes(rgb) for plane, rgb in planes.items()} for nodule_id, planes in views.items()}
        write_text_atomic(out_dir / "report.html", render_report_html(scan, pngs, model))
        tiles = [
            (f"{n['nodule_id']}\n{_mm(n)} P(malig) {n['malignancy_probability']:.2f}", views[n["nodule_id"]]["axial"])
            for n in scan["nodules"] if n["nodule_id"] in views
        ]  # fmt: skip
        write_montage(out_dir / "nodules.png", tiles, title=f"{scan['seriesuid']}: {len(scan['nodules'])} nodule(s), axial")
        if label_map is not None:
            label_map.result()  # its error, if any, is raised here


def _mm(finding: Mapping) -> str:
    measured = finding.get("measured_mean_diameter_mm")
    return f"{measured:.1f} mm" if measured is not None else f"~{finding['diameter_mm']:.1f} mm (net)"


def format_table(nodules: Iterable[Mapping], truth: Mapping[str, Mapping] | None = None) -> str:
    """A fixed-width table of findings; with ``truth`` (by nodule id) the reference values beside them."""
    header = f"{'nodule':<12}{'centre x,y,z (mm, LPS)':>26}{'meas mm':>9}{'net mm':>8}{'band':>10}{'P(nod)':>8}{'P(malig)':>10}"
    if truth is not None:
        header += f" | {'ref mm':>6}{'ref band':>10}{'ref label':>11}"
    lines = [header, "-" * len(header)]
    for n in nodules:
        centre = ",".join(f"{v:.1f}" for v in n["center_world_mm"])
        measured = n.get("measured_mean_diameter_mm")
        line = (
            f"{n['nodule_id']:<12}{centre:>26}{measured if measured is None else f'{measured:.1f}':>9}{n['diameter_mm']:>8.1f}"
            f"{n['size_band_name']:>10}{n['nodule_probability']:>8.2f}{n['malignancy_probability']:>10.2f}"
        )
        ref = (truth or {}).get(n["nodule_id"])
        if ref:
            label = {0: "benign", 1: "malignant"}.get(ref.get("malignancy"), "?")
            line += f" | {ref['diameter_mm']:>6.1f}{SIZE_BAND_NAMES[size_band(ref['diameter_mm'])]:>10}{label:>11}"
        elif truth is not None:
            line += f" | {'no nodule here (false positive)':>27}"
        lines.append(line)
    return "\n".join(lines)


def match_findings(findings: Sequence[Mapping], reference: Sequence[Mapping]) -> tuple[dict[str, Mapping], list[Mapping]]:
    """Each finding's reference nodule (its centre within the nodule's radius), and the nodules missed."""
    centres = [f["center_world_mm"] for f in findings]
    hits = hit_matrix(centres, [r["center_world_mm"] for r in reference], [r["diameter_mm"] / 2 for r in reference])
    matched: dict[str, Mapping] = {}
    for k, ref in enumerate(reference):
        if hits[:, k].any():
            nearest = min(np.flatnonzero(hits[:, k]), key=lambda i: math.dist(centres[i], ref["center_world_mm"]))
            matched[findings[nearest]["nodule_id"]] = ref
    found = {id(ref) for ref in matched.values()}
    return matched, [ref for ref in reference if id(ref) not in found]
