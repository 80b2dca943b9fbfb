import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from nodule_bundle.core.geometry import LPS_TO_RAS, voxel_to_world
from nodule_bundle.core.nodule import RATING_COLUMNS
from nodule_bundle.measuring.measure import MEASUREMENT_KEYS
from nodule_bundle.measuring.transforms import NoduleMeasured
from nodule_bundle.network.targets import NoduleHeadsd, NoduleTargetsd
from nodule_bundle.preprocessing.transforms import CTPreprocess, NoduleCrop, NoduleCropd, NoduleOutsideVolumeError


def _scan_with_dot(dot_voxel=(37, 41, 13)) -> MetaTensor:
    """Lung-like HU volume with one bright voxel, an oblique anisotropic affine and a non-zero origin."""
    a = np.deg2rad(15)
    aff_lps = np.eye(4)
    aff_lps[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([0.7, 0.7, 2.0])
    aff_lps[:3, 3] = [-40.0, 25.0, -200.0]
    vol = torch.full((1, 80, 90, 30), -850.0)
    vol[(0, *dot_voxel)] = 800.0
    return MetaTensor(vol, affine=torch.as_tensor(LPS_TO_RAS @ aff_lps), meta={"space": "RAS", "filename_or_obj": "scan.nii.gz"})


def test_crop_is_centred_on_the_world_point_with_isotropic_spacing():
    img = _scan_with_dot()
    world = voxel_to_world((37, 41, 13), img.affine)
    patch = NoduleCrop(patch_size=32, spacing_mm=1.0)(img, world)
    assert patch.shape == (1, 32, 32, 32)
    np.testing.assert_allclose(np.linalg.norm(patch.affine[:3, :3].numpy(), axis=0), [1.0, 1.0, 1.0])
    peak = np.unravel_index(int(patch[0].argmax()), patch.shape[1:])
    assert np.abs(np.array(peak) - (32 - 1) / 2).max() <= 1.0  # within a voxel of the patch centre
    assert img[0, 37, 41, 13] == 800.0  # the input is not modified


def test_crop_near_the_border_pads_instead_of_failing():
    img = _scan_with_dot((1, 1, 1))
    patch = NoduleCrop(patch_size=24, spacing_mm=1.0)(img, voxel_to_world((0.2, 0.3, 0.1), img.affine))
    assert patch.shape == (1, 24, 24, 24) and torch.isfinite(patch).all()


def test_crop_outside_the_volume_names_the_file():
    img = _scan_with_dot()
    with pytest.raises(NoduleOutsideVolumeError, match=r"scan\.nii\.gz: nodule at world .* outside the image"):
        NoduleCrop(40, 1.2)(img, voxel_to_world((-20, 10, 10), img.affine))


def test_cropd_makes_one_sample_per_nodule():
    img = _scan_with_dot()
    centres = voxel_to_world(np.array([[37, 41, 13], [20, 20, 10], [30, 12, 8]]), img.affine)
    item = {"image": img, "center_world_mm": centres, "nodule_id": ["a", "b", "c"], "seriesuid": "s"}
    samples = NoduleCropd("image", patch_size=16, spacing_mm=1.0, workers=2)(item)
    assert [s["nodule_id"] for s in samples] == ["a", "b", "c"] and all(s["seriesuid"] == "s" for s in samples)
    np.testing.assert_allclose(samples[0]["center_voxel"].numpy(), [37, 41, 13], atol=1e-6)
    np.testing.assert_allclose(samples[1]["center_world_mm"].numpy(), centres[1])
    serial = NoduleCropd("image", patch_size=16, spacing_mm=1.0, workers=1)(item)  # cropped side by side or one at a time: the same, in order
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(samples, serial))
    assert not torch.equal(samples[0]["image"], samples[1]["image"])


def _patch(hu: torch.Tensor) -> MetaTensor:
    return MetaTensor(hu, affine=torch.eye(4))


def test_preprocess_windows_hu_to_unit_range_and_smooths_noise():
    rng = np.random.default_rng(0)
    hu = torch.tensor(rng.normal(-850, 80, (1, 24, 24, 24)), dtype=torch.float32)
    hu[0, 0, 0, 0], hu[0, 1, 0, 0], hu[0, 5, 5, 5] = -3000.0, 3000.0, -300.0
    out = CTPreprocess(denoise_sigma_mm=0.0)(_patch(hu))
    assert out.dtype == torch.float32 and float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert float(out[0, 5, 5, 5]) == pytest.approx(0.5)  # -300 HU is the middle of [-1000, 400]
    smoothed = CTPreprocess(denoise_sigma_mm=1.0)(_patch(hu))
    assert float(smoothed[0, 4:-4, 4:-4, 4:-4].std()) < 0.5 * float(out[0, 4:-4, 4:-4, 4:-4].std())


def _blurred_edge() -> MetaTensor:
    hu = torch.full((1, 24, 24, 24), -850.0)
    hu[:, :, :, 12:] = 40.0
    return CTPreprocess(denoise_sigma_mm=1.5)(_patch(hu))  # a soft edge in [0, 1]


@pytest.mark.parametrize("deblur", ["unsharp", "richardson_lucy"])
def test_deblurring_sharpens_an_edge(deblur):
    soft = _blurred_edge()
    sharp = CTPreprocess(hu_window=(0.0, 1.0), denoise_sigma_mm=0.0, deblur=deblur)(_patch(soft))
    assert float(sharp.min()) >= 0.0 and float(sharp.max()) <= 1.0
    grad = lambda x: float((x[0, 12, 12, 12] - x[0, 12, 12, 11]).abs())  # noqa: E731
    assert grad(sharp) > 1.1 * grad(soft)


def test_equalisation_and_edge_channel():
    soft = _blurred_edge()
    eq = CTPreprocess(hu_window=(0.0, 1.0), denoise_sigma_mm=0.0, equalize=True)(_patch(soft))
    assert eq.shape == soft.shape and float(eq.min()) == 0.0 and float(eq.max()) == pytest.approx(1.0)
    two = CTPreprocess(edge_channel=True)(_patch(torch.where(torch.arange(24) < 12, -850.0, 40.0).expand(1, 24, 24, 24).clone()))
    assert two.shape == (2, 24, 24, 24)
    assert float(two[1, 12, 12, 11:13].max()) > 0.1 and float(two[1, 12, 12, 3]) == pytest.approx(0.0, abs=1e-6)


def test_preprocess_rejects_unknown_deblur():
    with pytest.raises(ValueError, match="deblur"):
        CTPreprocess(deblur="wiener")


def test_targets_mark_missing_labels():
    rated = NoduleTargetsd()({"malignancy": 1, "diameter_mm": 7.0, "spiculation": 4.5, "calcification": None})
    known = rated["label"]
    assert known[:4].tolist() == [1.0, 1.0, 7.0, 1.0]  # 7 mm is band 1 (6-<8 mm); an annotated nodule is a nodule
    assert known[4 + RATING_COLUMNS.index("spiculation")] == 4.5 and torch.isnan(known[4:]).sum() == len(RATING_COLUMNS) - 1
    assert rated["spiculation"] == 4.5 and math.isnan(rated["calcification"]) and math.isnan(rated["lobulation"])  # every key: items collate
    unknown = NoduleTargetsd()({"malignancy": None, "diameter_mm": None, "is_nodule": None})["label"]
    assert unknown[0] == -1 and unknown[1] == -1 and math.isnan(float(unknown[2])) and unknown[3] == -1
    assert torch.isnan(unknown[4:]).all() and len(unknown) == 4 + len(RATING_COLUMNS)
    assert NoduleTargetsd()({"malignancy": None, "diameter_mm": None, "is_nodule": 0})["label"][3] == 0


def test_heads_are_named_and_normalised():
    ratings = [1.5, 1.0, 6.0, 4.0, 3.5, 2.0, 4.5]
    pred = torch.tensor([0.0, 2.0, 0.1, 3.0, 0.2, 0.3, 7.5, 1.0, -1.0, *ratings])
    out = NoduleHeadsd()({"pred": pred, "label": torch.tensor([1.0, 1.0, 7.0, 0.0, *[math.nan] * 6, 2.0])})
    assert out["ratings_pred"].tolist() == ratings and out["ratings_true"][-1] == 2.0 and torch.isnan(out["ratings_true"][0])
    assert out["nodule_prob"].item() == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item()) and int(out["nodule_true"]) == 0
    assert out["malignancy_prob"].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert out["size_band"] == 1 and out["size_band_probs"].sum().item() == pytest.approx(1.0)
    assert out["diameter_mm_pred"].item() == 7.5 and int(out["malignancy_true"]) == 1


def test_the_nodule_label_map_lies_on_the_scan_grid_over_each_nodule():
    """Two spheres in an oblique, anisotropic scan: each labelled where it is, with about its volume."""
    a = np.deg2rad(15)
    aff_lps = np.eye(4)
    aff_lps[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([0.7, 0.7, 1.5])
    aff_lps[:3, 3] = [-40.0, 25.0, -200.0]
    img = MetaTensor(torch.full((1, 90, 90, 40), -850.0), affine=torch.as_tensor(LPS_TO_RAS @ aff_lps), meta={"space": "RAS"})
    grid = np.stack(np.indices(img.shape[1:]), -1).reshape(-1, 3)
    world = voxel_to_world(grid, img.affine).reshape(*img.shape[1:], 3)
    centres, radii = [voxel_to_world((30, 35, 15), img.affine), voxel_to_world((60, 55, 25), img.affine)], [4.0, 6.0]
    for c, r in zip(centres, radii):
        img[0][torch.from_numpy(np.linalg.norm(world - c, axis=-1) <= r)] = 30.0
    d = NoduleMeasured(keys="image", label_key="nodule_label", workers=2)({"image": img, "center_world_mm": centres})
    label = d["nodule_label"]
    assert label.shape == img.shape and torch.equal(label.affine, img.affine)
    assert label[0, 30, 35, 15] == 1 and label[0, 60, 55, 25] == 2 and label[0, 5, 5, 5] == 0
    for value, r in ((1, 4.0), (2, 6.0)):
        volume = float((label == value).sum()) * 0.7 * 0.7 * 1.5
        assert volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.25)
    assert d["measured_mean_diameter_mm"] == pytest.approx([8.0, 12.0], abs=1.0)
    serial = NoduleMeasured(keys="image", label_key="nodule_label", workers=1)({"image": img, "center_world_mm": centres})
    assert torch.equal(serial["nodule_label"], label)  # nodules measured side by side give what one at a time gives
    assert all(serial[k] == d[k] for k in MEASUREMENT_KEYS)
