"""The learned nodule mask: its training config, its transforms, and the measurement that uses it."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from monai.data import MetaTensor
from torch import nn

from bundle_run import bundle_args, monai_bundle_run
from preloaded_runs import preloaded_bundle_runs
from nodule_bundle.data.datalist import DatalistError, load_mask_datalist
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.measuring.measure import axial_diameters
from nodule_bundle.network.segmentation import CentredUNet, NoduleSegmenter, ReferenceMaskd
from nodule_bundle.core.checksums import sha256_file
from nodule_bundle.apps.sharing.export import export_bundle
from nodule_bundle.apps.sharing.network_checks import load_weights
from nodule_bundle.apps.sharing.verify import verify_bundle
from nodule_bundle.measuring.transforms import NoduleMeasured


def test_reference_mask_is_the_items_own_nodule_and_a_missing_one_is_named():
    labels = MetaTensor(torch.tensor([[[[0, 1], [2, 2]]]], dtype=torch.uint8), meta={"filename_or_obj": "labels/scan.nii.gz"})
    out = ReferenceMaskd()({"mask": labels, "mask_value": 2, "nodule_id": "n2"})
    assert out["label"].tolist() == [[[[0, 0], [1, 1]]]] and "mask" not in out
    with pytest.raises(NoduleBundleError, match=r"labels/scan.nii.gz: no voxel labelled 3 .*n3"):
        ReferenceMaskd()({"mask": labels, "mask_value": 3, "nodule_id": "n3"})


def test_centred_unet_outlines_any_crop_its_levels_can_halve_with_one_prior_width():
    net = CentredUNet(patch_size=16, channels=(4, 8))
    assert net(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 1, 16, 16, 16)
    assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)  # a larger crop, for a nodule that fills the first
    assert "prior" not in net.state_dict()  # made from the crop size, not saved
    small, large = net.prior(16)[0, 0], net.prior(32)[0, 0]
    assert torch.allclose(small[:, 7, 7], large[8:24, 15, 15])  # the same bump in voxels, whatever the crop
    with pytest.raises(ValueError, match=r"multiple of 2, got \(15, 15, 15\)"):
        net(torch.zeros(1, 1, 15, 15, 15))


class KnownBall(nn.Module):
    """Logits of a ball of ``radius_voxels`` at the crop's centre: a segmentation network whose answer is known."""

    def __init__(self, radius_voxels: float):
        super().__init__()
        self.radius_voxels = radius_voxels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2] * 3, indexing="ij"))
        inside = grid.norm(dim=0) <= self.radius_voxels
        return torch.where(inside, 10.0, -10.0).expand(x.shape[0], 1, n, n, n)


class KnownTissue(KnownBall):
    """Logits of the tissue (denser than -400 HU in the segmenter's -1000..400 window) within ``radius_voxels``
    of the crop's centre: a network that follows what is dense, as a trained one does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where((super().forward(x) > 0) & (x[:, :1] > 600 / 1400), 10.0, -10.0)


def _scan_with_two_nodules() -> tuple[MetaTensor, list[list[float]]]:
    """Lung at -850 HU on 1 mm voxels with an 8 mm x 31 mm solid rod and a 5 mm ball."""
    hu = np.full((100, 100, 60), -850.0, np.float32)
    x, y, z = np.indices(hu.shape)
    hu[(np.abs(x - 30) <= 15) & ((y - 50) ** 2 + (z - 30) ** 2 <= 16)] = 30.0
    hu[(x - 75) ** 2 + (y - 50) ** 2 + (z - 30) ** 2 <= 6] = 30.0
    image = MetaTensor(torch.from_numpy(hu)[None], affine=torch.eye(4, dtype=torch.float64), meta={"space": "RAS"})
    return image, [[-30.0, -50.0, 30.0], [-75.0, -50.0, 30.0]]  # LPS world mm of the voxel centres


def test_nodules_are_measured_on_the_learned_mask_where_it_is_long_enough():
    """The network chooses the nodule's voxels, the scan's voxels decide its edge: a 20 mm ball outlined
    around the rod keeps the rod's 21 mm inside it at the rod's own width (the threshold's mask, all 31 mm);
    around the 5 mm ball, the ball itself. Where the network's outline is shorter than the segmenter's
    ``min_long_axis_mm``, the threshold's mask measures the nodule."""
    image, centres = _scan_with_two_nodules()
    plain = NoduleMeasured("image")({"image": image, "center_world_mm": centres})
    assert plain["measured_by"] == ["threshold", "threshold"]
    assert plain["measured_long_axis_mm"][0] == pytest.approx(31.0, abs=1.5)  # the rod ends in the lung: all of it is the nodule's
    assert plain["measured_long_axis_mm"][1] < 8.0  # the ball
    ball = NoduleSegmenter(KnownBall(radius_voxels=10.0), patch_size=48, spacing_mm=1.0, min_long_axis_mm=15.0)
    learned = NoduleMeasured("image", segmenter=ball, crop_key="crop")({"image": image, "center_world_mm": centres})
    assert learned["measured_by"] == ["learned", "learned"]
    assert learned["measured_long_axis_mm"][0] == pytest.approx(21.0, abs=1.0)
    rod = image[0].numpy() > -400
    distance = np.linalg.norm(np.indices(rod.shape) - np.array([30, 50, 30])[:, None, None, None], axis=0)
    # the rod's voxels within the ball, give or take the edge voxel; not the ball's 4,200 mm³
    assert (rod & (distance <= 9.5)).sum() <= learned["measured_volume_mm3"][0] <= (rod & (distance <= 11.5)).sum()
    picture_mask = learned["crop"][0][1].numpy().astype(bool)  # the report's pictures show the voxels that were measured
    assert picture_mask.sum() * 0.6**3 == pytest.approx(learned["measured_volume_mm3"][0], rel=0.08)
    assert learned["measured_long_axis_mm"][1] == pytest.approx(plain["measured_long_axis_mm"][1], abs=1.0)  # the ball, not the outline's 21 mm
    too_short = NoduleSegmenter(KnownBall(radius_voxels=10.0), patch_size=48, spacing_mm=1.0, min_long_axis_mm=25.0)
    kept = NoduleMeasured("image", segmenter=too_short)({"image": image, "center_world_mm": centres})
    assert kept["measured_by"] == ["threshold", "threshold"] and kept["measured_long_axis_mm"] == plain["measured_long_axis_mm"]
    nothing = NoduleSegmenter(KnownBall(radius_voxels=0.0), patch_size=48, spacing_mm=1.0)  # outlines nothing: the threshold's answer
    assert NoduleMeasured("image", segmenter=nothing)({"image": image, "center_world_mm": centres})["measured_by"] == ["threshold", "threshold"]


def test_the_learned_mask_leaves_out_the_vessel_it_runs_into():
    """A network that outlines the tissue within 12 mm of a 12 mm ball takes in 6 mm of the 4 mm vessel leaving it: the
    opening that drops vessels from the threshold's mask drops it from the learned mask too, but for its
    last millimetre at the nodule (the restored edge) and the edge's growth; the ball alone is what is measured."""
    hu = np.full((80, 80, 60), -850.0, np.float32)
    x, y, z = np.indices(hu.shape)
    hu[(x - 40) ** 2 + (y - 40) ** 2 + (z - 30) ** 2 <= 36] = 30.0
    hu[(x >= 40) & ((y - 40) ** 2 + (z - 30) ** 2 <= 4)] = 30.0
    image = MetaTensor(torch.from_numpy(hu)[None], affine=torch.eye(4, dtype=torch.float64), meta={"space": "RAS"})
    segmenter = NoduleSegmenter(KnownTissue(radius_voxels=12.0), patch_size=48, spacing_mm=1.0, min_long_axis_mm=10.0)
    measured = NoduleMeasured("image", segmenter=segmenter)({"image": image, "center_world_mm": [[-40.0, -40.0, 30.0]]})
    assert measured["measured_by"] == ["learned"]
    assert 12.0 <= measured["measured_long_axis_mm"][0] <= 15.5  # the restored millimetre and the edge's two voxels, not the 18 mm out along the vessel
    assert measured["measured_volume_mm3"][0] < (hu > -400).sum() - 40  # the vessel's 6 mm (75 mm³) inside the outline mostly left out


def test_a_nodule_that_fills_the_segmenters_crop_is_outlined_in_the_larger_one():
    """A 31 mm rod outlined by a 53 mm ball reaches the border of the 48 mm crop: the 96 mm crop outlines it, whole."""
    image, centres = _scan_with_two_nodules()
    segmenter = NoduleSegmenter(KnownBall(radius_voxels=26.0), patch_size=48, large_patch_size=96, spacing_mm=1.0, min_long_axis_mm=15.0)
    probability, cropper = segmenter.probability(image, centres[0])
    assert probability.shape == (1, 96, 96, 96) and cropper.patch_size == 96
    measured = NoduleMeasured("image", segmenter=segmenter)({"image": image, "center_world_mm": centres[:1]})
    rod = image[0].numpy() > -400
    rod[60:] = False  # not the other ball
    assert measured["measured_by"] == ["learned"] and measured["measured_long_axis_mm"][0] == pytest.approx(axial_diameters(rod, 1.0)[0], abs=0.5)


def test_mask_datalist_holds_the_nodules_with_reference_masks(phantom_dir, tmp_path):
    items = load_mask_datalist(phantom_dir / "datalist.json", "training")
    everything = json.loads((phantom_dir / "datalist.json").read_text())["training"]
    assert len(items) == sum(1 for i in everything if i.get("is_nodule", 1)) > 0  # the phantom writes every nodule's mask
    assert all(i["mask_value"] > 0 and i["mask"].startswith(str(phantom_dir)) for i in items)
    without = tmp_path / "datalist.json"
    without.write_text(json.dumps({"training": [{k: v for k, v in i.items() if k not in ("mask", "mask_value")} for i in everything]}))
    (tmp_path / "images").symlink_to(phantom_dir / "images")
    with pytest.raises(DatalistError, match="no nodule of the 'training' split has a reference mask"):
        load_mask_datalist(without, "training")


@pytest.fixture(scope="module")
def segmenter_run(phantom_dir, tmp_path_factory):
    """configs/train_segmentation.json trained for a few epochs on the phantom's masks."""
    out = tmp_path_factory.mktemp("segmenter")
    result = monai_bundle_run(["train_segmentation"], dataset_dir=phantom_dir, ckpt_dir=out / "models", output_dir=out / "eval",
                              epochs=12, num_workers=0)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout + result.stderr


def test_train_segmentation_learns_the_reference_masks(segmenter_run):
    out, log = segmenter_run
    best = float(re.findall(r"val_mean_dice best value: ([0-9.]+)", log)[-1])
    assert best > 0.1  # one that outlines nothing scores 0, one that outlines the whole crop about 0.01
    net = CentredUNet(patch_size=48)
    net.load_state_dict(torch.load(out / "models" / "segmenter.pt", weights_only=True))  # inference.json's network, strictly


def test_inference_reports_what_measured_each_nodule(segmenter_run, trained, phantom_dir, test_scan, tmp_path):
    segmenter = segmenter_run[0] / "models" / "segmenter.pt"
    uid, rows, csv_path = test_scan
    image = phantom_dir / "images" / f"{uid}.nii.gz"
    common = dict(image=image, nodules=csv_path, seriesuid=uid, ckpt_path=trained / "models" / "model.pt")
    answers = {}
    runs = {"default": {}, "learned": dict(segmenter_path=segmenter, learned_masks=True), "held": dict(threshold_hold_margin_mm=0.0)}
    for name, result in zip(runs, preloaded_bundle_runs([bundle_args(["inference"], output_dir=tmp_path / n, **common, **e) for n, e in runs.items()])):
        assert result.returncode == 0, result.stderr[-3000:]
        nodules = json.loads((tmp_path / name / "report.json").read_text())["scans"][0]["nodules"]
        answers[name] = {n["nodule_id"]: n for n in nodules}
    assert {n["measured_by"] for n in answers["default"].values()} == {"threshold"}  # no segmenter.pt beside model.pt
    assert "learned" in {n["measured_by"] for n in answers["learned"].values()}
    for nodule_id, finding in answers["learned"].items():
        if finding["measured_by"] == "threshold":  # the learned mask found nothing there: the threshold's answer, held at 2 r, stands
            assert finding["measured_volume_mm3"] == answers["held"][nodule_id]["measured_volume_mm3"]


def test_an_export_carries_the_learned_segmentation_and_checks_its_hash(segmenter_run, trained, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy2(trained / "models" / "model.pt", models / "model.pt")
    shutil.copy2(segmenter_run[0] / "models" / "segmenter.pt", models / "segmenter.pt")
    out = export_bundle(tmp_path / "export", ckpt=models / "model.pt")
    listed = {entry["path"]: entry["hash_val"] for entry in yaml.safe_load((out / "large_files.yml").read_text())["large_files"]}
    assert listed["models/segmenter.pt"] == sha256_file(out / "models" / "segmenter.pt")
    CentredUNet(patch_size=48).load_state_dict(load_weights(out / "models" / "segmenter.pt"))  # the network's own weights, strictly
    assert all(check.ok for check in verify_bundle(out)), [c for c in verify_bundle(out) if not c.ok]
    data = bytearray((out / "models" / "segmenter.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "models" / "segmenter.pt").write_bytes(bytes(data))
    failed = {c.name: c.detail for c in verify_bundle(out) if not c.ok}
    assert "models/segmenter.pt: sha256 differs" in failed["file sizes and large_files.yml"]
