"""The bundle built once for clicks (what the MONAI Label app serves), without a server."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bundle_run import ROOT
from nodule_bundle.core.geometry import world_to_voxel
from nodule_bundle.apps.interactive import NoduleService, PointOutsideImageError


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    weights = tmp_path_factory.mktemp("served") / "model.pt"
    weights.write_bytes((trained / "models" / "model.pt").read_bytes())
    return NoduleService(ROOT, weights)


def test_clicked_points_get_findings_and_a_label_map_on_the_scan_grid(service, phantom_dir, test_scan):
    uid, rows, _ = test_scan
    image = phantom_dir / "images" / f"{uid}.nii.gz"
    ct = service._read(image)
    points = np.rint(world_to_voxel(np.array([r["center_world_mm"] for r in rows]), ct.affine)).astype(int)
    findings, label = service.classify_points(image, points.tolist())
    assert len(findings) == len(rows) and label.shape == ct.shape and torch.equal(label.affine, ct.affine)
    measured = [(f, r) for f, r in zip(findings, rows) if f["measured_mean_diameter_mm"] is not None]
    assert np.median([abs(f["measured_mean_diameter_mm"] - r["diameter_mm"]) for f, r in measured]) < 1.0
    for f, p in zip(findings, points):
        if f["measured_volume_mm3"]:  # the largest nodules may cover a smaller neighbour's voxel; check each one's own
            assert int(label[0][tuple(p)]) == f["label_value"] or f["measured_mean_diameter_mm"] < 4.0
    with pytest.raises(PointOutsideImageError, match="outside the image"):
        service.classify_points(image, [[-5, 0, 0]])
    for malformed in ("abc", [[1, 2]], [[1, None, 2]], [[1.0, float("nan"), 2.0]], {"i": 1}):
        with pytest.raises(PointOutsideImageError, match="foreground must be voxel indices"):
            service.classify_points(image, malformed)
    assert service.classify_points(image, points[0].tolist())[0][0]["nodule_id"] == "p01"  # one point, not in a list


def test_the_whole_scan_answer_is_inference_jsons_detection_step(service, phantom_dir, test_scan):
    """detect() runs the config's own DetectNodulesd on the scan already read: the same candidates,
    split by nodule probability, the rejected ones out of the label map."""
    uid, rows, _ = test_scan
    image = phantom_dir / "images" / f"{uid}.nii.gz"
    kept, rejected, label, search = service.detect(image)
    found = service.detection({"image": service._read(image)})
    assert sorted(f["nodule_id"] for f in kept + rejected) == sorted(found["nodule_id"])
    assert search == found["detection"] and search["candidates"] == len(kept + rejected) and search["lung_volume_ml"] > 0
    assert all(f["nodule_probability"] >= 0.5 for f in kept) and all(f["nodule_probability"] < 0.5 for f in rejected)
    assert set(np.unique(label.numpy()).tolist()) <= {0, *(f["label_value"] for f in kept)}
    hit = [any(np.linalg.norm(np.subtract(f["center_world_mm"], r["center_world_mm"])) <= r["diameter_mm"] / 2 for f in kept + rejected)
           for r in rows if r["diameter_mm"] >= 4.0]  # fmt: skip
    assert sum(hit) >= 0.6 * len(hit)


def test_new_weights_are_used_as_soon_as_their_file_changes(service, phantom_dir, test_scan):
    uid, rows, _ = test_scan
    image = phantom_dir / "images" / f"{uid}.nii.gz"
    point = np.rint(world_to_voxel(rows[0]["center_world_mm"], service._read(image).affine)).astype(int).tolist()
    before = service.classify_points(image, [point])[0][0]["malignancy_probability"]
    state = torch.load(service.model_path, weights_only=True)
    state["malignancy.bias"] = state["malignancy.bias"] + torch.tensor([-3.0, 3.0])  # strongly towards malignant
    torch.save(state, service.model_path)
    os.utime(service.model_path, ns=(0, service.model_path.stat().st_mtime_ns + 10**9))
    after = service.classify_points(image, [point])[0][0]["malignancy_probability"]
    assert after > before
