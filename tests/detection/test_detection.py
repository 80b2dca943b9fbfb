"""Whole-scan detection on volumes with known content: a chest with two lungs, then a sphere, a tube,
a nodule on the pleura; and the FROC/CPM scoring on hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scipy import ndimage as ndi

from nodule_bundle.apps.bench.whole_scan import recursive_log_response
from nodule_bundle.detection import candidates
from nodule_bundle.detection.candidates import (
    MIN_ROUND_SCORE, MIN_SCORE, Candidate, _ball, _close_and_fill, _laplacian, centred_on_blobs, detect_candidates, isotropic,
    lung_mask, strongest_responses,
)
from nodule_bundle.detection.froc import DETECTOR_WEIGHT, froc, match_scan, system_score
from nodule_bundle.detection.transforms import DetectNodulesd
from nodule_bundle.core.geometry import LPS_TO_RAS, world_to_voxel

SPACING = np.array([0.8, 0.8, 1.5])
SHAPE = (150, 125, 60)  # 120 x 100 x 90 mm
ORIGIN = np.array([-60.0, -50.0, -120.0])


def _world_grid():
    idx = np.indices(SHAPE, dtype=np.float64)
    return [ORIGIN[a] + SPACING[a] * idx[a] for a in range(3)]


def _chest(rng_seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Air, an elliptical body of soft tissue, two lung ellipsoids at -850 HU with noise."""
    x, y, z = _world_grid()
    rng = np.random.default_rng(rng_seed)
    hu = np.full(SHAPE, -1000.0)
    hu[(x / 56) ** 2 + (y / 46) ** 2 <= 1] = 40.0
    centres = [np.array([-25.0, 0.0, -75.0]), np.array([25.0, 0.0, -75.0])]
    for c in centres:
        hu[((x - c[0]) / 20) ** 2 + ((y - c[1]) / 32) ** 2 + ((z - c[2]) / 38) ** 2 <= 1] = -850.0
    return hu + rng.normal(0, 15, SHAPE), centres


def _add_sphere(hu, center, radius_mm, value=30.0):
    x, y, z = _world_grid()
    hu[(x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius_mm**2] = value


def _image(hu) -> MetaTensor:
    affine_lps = np.diag([*SPACING, 1.0])
    affine_lps[:3, 3] = ORIGIN
    return MetaTensor(torch.from_numpy(hu[None].astype(np.float32)), affine=torch.as_tensor(LPS_TO_RAS @ affine_lps))


def _inside(mask: MetaTensor, point) -> bool:
    index = np.round(world_to_voxel(point, mask.affine, "RAS")).astype(int)
    return bool(mask[0][tuple(index)])


def test_a_sphere_in_a_lung_gives_one_candidate_at_its_centre():
    hu, (left, _) = _chest()
    center = left + np.array([2.3, -4.1, 5.2])
    _add_sphere(hu, center, 4.0)
    candidates = detect_candidates(_image(hu))
    assert len(candidates) == 1
    (found,) = candidates
    assert np.linalg.norm(np.array(found.center_world_mm) - center) <= 1.0
    assert 2.5 <= found.radius_mm <= 6.0 and found.blobness > 0.5


def test_a_faint_ground_glass_ball_is_kept_for_its_roundness_a_solid_one_for_its_score():
    hu, (left, right) = _chest()
    faint, solid = left + np.array([1.7, 3.2, -4.4]), right + np.array([-2.0, 1.0, 3.0])
    _add_sphere(hu, faint, 4.0, value=-750.0)
    _add_sphere(hu, solid, 4.0)
    found = detect_candidates(_image(hu))
    assert len(found) == 2
    by_centre = {name: min(found, key=lambda c: np.linalg.norm(np.array(c.center_world_mm) - p)) for name, p in (("faint", faint), ("solid", solid))}
    assert by_centre["solid"].score >= MIN_SCORE > by_centre["faint"].score  # ranked below the solid one
    assert by_centre["faint"].response * by_centre["faint"].blobness ** 2 >= MIN_ROUND_SCORE
    assert np.linalg.norm(np.array(by_centre["faint"].center_world_mm) - faint) <= 1.5
    lost = detect_candidates(_image(hu), min_round_score=np.inf)  # the score's floor alone would lose the ground glass
    assert [np.linalg.norm(np.array(c.center_world_mm) - solid) <= 1.5 for c in lost] == [True]


def test_a_vessel_like_tube_is_rejected():
    hu, (left, _) = _chest()
    x, y, z = _world_grid()
    p0, p1 = left + np.array([0, -45.0, -45.0]), left + np.array([0, 45.0, 45.0])  # through the lung, as vessels run
    seg = p1 - p0
    t = np.clip(((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (z - p0[2]) * seg[2]) / (seg @ seg), 0, 1)
    dist = np.sqrt((x - p0[0] - t * seg[0]) ** 2 + (y - p0[1] - t * seg[1]) ** 2 + (z - p0[2] - t * seg[2]) ** 2)
    hu[dist <= 2.5] = 40.0
    assert detect_candidates(_image(hu)) == []


def test_a_juxta_pleural_nodule_stays_inside_the_lung_mask():
    hu, (left, _) = _chest()
    pleura = left + np.array([-20.0, 0.0, 0.0])  # the lateral edge of the left lung ellipsoid
    center = pleura + np.array([5.0, 0, 0])
    _add_sphere(hu, center, 6.0)  # attached to the chest wall over its outer millimetre
    image = _image(hu)
    mask = lung_mask(image)
    for offset in ([0, 0, 0], [2.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [0, -3.0, 0]):
        assert _inside(mask, center + np.array(offset)), offset  # the nodule's body is in the mask
    assert _inside(mask, left) and _inside(mask, left + np.array([50.0, 0, 0]))  # both lungs
    assert not _inside(mask, np.array([0.0, 0.0, -75.0]))  # the mediastinum between them
    assert not _inside(mask, np.array([-58.0, -48.0, -75.0]))  # air outside the body
    (found,) = detect_candidates(image, mask=mask)
    assert np.linalg.norm(np.array(found.center_world_mm) - center) <= 3.0  # a hit (<= radius), pulled off the wall


def test_a_vessel_crossing_a_ground_glass_nodule_does_not_pull_its_candidate_off_its_centre(monkeypatch):
    """The LoG's maximum lies between the nodule and the vessel through its edge; the candidate is
    moved back to the centre of the nodule segmented there."""
    hu, (left, _) = _chest()
    center = left + np.array([1.3, -2.1, 2.6])
    _add_sphere(hu, center, 5.5, value=-550.0)
    x, y, z = _world_grid()
    hu[(np.hypot(x - center[0] - 4.5, z - center[2]) <= 1.5) & (np.abs(y - center[1]) <= 30)] = 40.0
    (found,) = detect_candidates(_image(hu))
    assert np.linalg.norm(np.array(found.center_world_mm) - center) <= 0.5
    monkeypatch.setattr(candidates, "centred_on_blobs", lambda found, *_: found)
    (maximum,) = detect_candidates(_image(hu))
    assert np.linalg.norm(np.array(maximum.center_world_mm) - center) >= 1.0  # where the LoG alone puts it


def test_a_large_nodules_lobe_is_not_a_second_candidate(monkeypatch):
    hu, (left, _) = _chest()
    center = left + np.array([1.3, -2.1, 2.6])
    _add_sphere(hu, center, 9.0)
    _add_sphere(hu, center + np.array([6.6, 8.8, 0.0]), 4.5)  # a lobe whose centre lies 11 mm out
    (found,) = detect_candidates(_image(hu))
    assert np.linalg.norm(np.array(found.center_world_mm) - center) <= 1.5
    monkeypatch.setattr(candidates, "centred_on_blobs", lambda found, *_: found)
    assert len(detect_candidates(_image(hu))) == 2  # the LoG alone sees the lobe as a blob of its own


def test_candidates_move_to_their_nodules_centre_and_two_on_one_nodule_become_one():
    hu, (left, right) = _chest()
    center = left + np.array([1.3, -2.1, 2.6])
    _add_sphere(hu, center, 7.0)
    fine = isotropic(_image(hu), 1.0)
    array, affine = fine[0].numpy(), fine.affine.numpy()
    off, beside, lung = center + np.array([2.5, 1.0, 0.0]), center + np.array([-2.0, 0.0, 2.0]), right + np.array([0.0, 5.0, 0.0])
    found = [Candidate(tuple(p), 3.2, score, score, 1.0) for p, score in ((off, 300.0), (beside, 200.0), (lung, 100.0))]
    moved = centred_on_blobs(found, array, affine, "RAS", 1.0)
    assert [c.score for c in moved] == [300.0, 100.0]  # the weaker one on the same nodule is dropped
    assert np.linalg.norm(np.array(moved[0].center_world_mm) - center) <= 0.5
    assert moved[1].center_world_mm == tuple(lung)  # plain lung: nothing segmented, the candidate stays


@pytest.mark.parametrize("radius_mm", [1.5, 2.2, 3.2, 4.6, 6.7, 10.0])
def test_the_log_of_a_sphere_matches_itks_recursive_laplacian_of_gaussian(radius_mm):
    """The detector's LoG (a recursive Gaussian, then finite differences) picks the same scale at a
    sphere's centre as ITK's LaplacianRecursiveGaussianImageFilter and answers within 4 % everywhere."""
    radii = np.array([1.5, 2.2, 3.2, 4.6, 6.7, 10.0])
    offsets = np.indices((48, 48, 48)) - 23.6
    hu = np.where((offsets**2).sum(0) <= radius_mm**2, 30.0, -850.0)
    best, which = strongest_responses(hu, radii, 1.0)
    reference, reference_which = strongest_responses(hu, radii, 1.0, recursive_log_response)
    centre = (24, 24, 24)
    assert which[centre] == reference_which[centre] == list(radii).index(radius_mm)
    assert np.abs(best - reference).max() <= 0.04 * reference[centre]


def test_the_laplacian_is_scipys_stencil():
    smoothed = np.random.default_rng(0).normal(0.0, 100.0, (30, 25, 20)).astype(np.float32)
    np.testing.assert_allclose(_laplacian(smoothed, 2.0), ndi.laplace(smoothed, mode="nearest") / 4.0, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_lung_closing_by_distance_transforms_equals_a_binary_closing_with_a_ball(seed):
    region = ndi.gaussian_filter(np.random.default_rng(seed).random((70, 60, 50)), 3) > 0.52
    for radius in (1, 3, 5):
        expected = ndi.binary_fill_holes(ndi.binary_closing(np.pad(region, radius + 1), _ball(radius))[(slice(radius + 1, -radius - 1),) * 3])
        assert (_close_and_fill(region, radius) == expected).all()


def test_match_and_froc_on_hand_counted_detections():
    nodules, radii = np.array([[0, 0, 0], [50, 0, 0.0]]), np.array([5.0, 3.0])
    candidates = np.array([[1, 1, 0], [2, 0, 0], [49, 0, 2.0], [80, 0, 0], [0, 30, 0.0]])
    scores = np.array([0.9, 0.5, 0.3, 0.8, 0.1])
    best, fp = match_scan(candidates, scores, nodules, radii)
    assert best.tolist() == [0.9, 0.3]  # the second candidate on nodule 0 is neither TP nor FP
    assert sorted(fp.tolist()) == [0.1, 0.8]
    result = froc([(candidates, scores, nodules, radii), (np.zeros((0, 3)), np.zeros(0), nodules[:1], radii[:1])])
    assert result["n_nodules"] == 3 and result["n_scans"] == 2
    assert result["max_sensitivity"] == pytest.approx(2 / 3)
    # at 0.5 FP/scan (one FP over two scans, the 0.8 one) both found nodules are in: sensitivity 2/3
    assert result["sensitivity_at_fp_per_scan"]["0.5"] == pytest.approx(2 / 3, abs=1e-6)
    assert 0 < result["cpm"] <= 2 / 3
    # the same with nodule 1 below the size evaluated: its candidate is neither a hit nor a false positive
    best, fp = match_scan(candidates, scores, nodules[:1], radii[:1], nodules[1:], radii[1:])
    assert best.tolist() == [0.9] and sorted(fp.tolist()) == [0.1, 0.8]


def test_the_system_score_ranks_by_both_the_network_and_the_detector():
    scores = system_score([0.5, 0.9, 0.5, 0.0, 1.0], [100.0, 100.0, 400.0, 100.0, 100.0])
    assert scores[1] > scores[0] and scores[2] > scores[0]  # more confident network, or a stronger blob
    assert np.all(np.isfinite(scores)) and scores[3] < scores[0] < scores[4]  # certain 0 and 1 stay finite
    assert scores[0] == pytest.approx(DETECTOR_WEIGHT * np.log(100.0))  # even odds: the detector decides


def test_the_detection_transform_finds_nodules_only_where_no_list_was_given():
    hu, (left, _) = _chest()
    center = left + np.array([2.3, -4.1, 5.2])
    _add_sphere(hu, center, 4.0)
    image = _image(hu)
    image.meta["filename_or_obj"] = "/scans/chest-01.nii.gz"
    detect = DetectNodulesd("image", spacing_mm=1.0, min_score=40.0)
    found = detect({"image": image})
    assert found["nodule_id"] == ["d01"] and found["seriesuid"] == "chest-01"
    assert np.linalg.norm(np.array(found["center_world_mm"][0]) - center) <= 1.0
    assert found["detection_score"][0] >= 40.0 and found["detection_radius_mm"][0] > 0
    given = {"image": image, "seriesuid": "s", "center_world_mm": [[0.0, 0.0, -75.0]], "nodule_id": ["n1"]}
    assert detect(given) == given  # a nodule list is classified as given, never replaced by detection
    empty = _image(_chest()[0])
    empty.meta["filename_or_obj"] = "/scans/chest-02.nii.gz"
    nothing = detect({"image": empty})
    assert nothing["center_world_mm"] == [] and nothing["nodule_id"] == []


def test_the_search_says_what_it_saw_and_why_a_scan_of_lung_alone_finds_nothing():
    """The lung volume (two ellipsoids of 4/3 pi 20 x 32 x 38 mm3 each) and the candidate count; a
    small field of view inside a lung, a 9 mm nodule in its middle, has no lung the detector can
    find (its air touches the edge): it says so instead of answering "no nodules" without a word."""
    hu, (left, _) = _chest()
    _add_sphere(hu, left, 4.5)
    detect = DetectNodulesd("image", spacing_mm=1.0, min_score=40.0)
    facts = detect({"image": _image(hu), "seriesuid": "s"})["detection"]
    assert facts["candidates"] == 1 and "warning" not in facts
    assert facts["lung_volume_ml"] == pytest.approx(2 * 4 / 3 * np.pi * 20 * 32 * 38 / 1000, rel=0.15)
    index = np.round(world_to_voxel(left, _image(hu).affine, "RAS")).astype(int)
    field = hu[index[0] - 15 : index[0] + 15, index[1] - 25 : index[1] + 25, index[2] - 12 : index[2] + 12]
    image = MetaTensor(torch.from_numpy(field[None].astype(np.float32)), affine=_image(hu).affine)
    found = detect({"image": image, "seriesuid": "lung-only"})
    assert found["center_world_mm"] == [] and found["detection"]["lung_volume_ml"] == 0
    assert "no lung found" in found["detection"]["warning"] and "field of view" in found["detection"]["warning"]
