"""One scan, any format, any orientation: world millimetres land on the same voxel, and the nodule is
cropped to the same patch (<= 1 HU apart) whichever way the scanner stored it."""

from __future__ import annotations

import numpy as np
import pytest

from nodule_bundle.data.phantom import PhantomConfig, make_scan
from nodule_bundle.data.writers import write_dicom_series, write_itk_image, write_nifti
from nodule_bundle.core.geometry import voxel_to_world, world_to_voxel
from nodule_bundle.preprocessing.transforms import NoduleCrop
from nodule_bundle.reading.load import LoadCTImaged

WRITERS = {
    "nifti": lambda d, v, a: write_nifti(d / "scan.nii.gz", v, a) or d / "scan.nii.gz",
    "mhd": lambda d, v, a: write_itk_image(d / "scan.mhd", v, a) or d / "scan.mhd",
    "nrrd": lambda d, v, a: write_itk_image(d / "scan.nrrd", v, a) or d / "scan.nrrd",
    "dicom": lambda d, v, a: write_dicom_series(d / "dicom", v, a, "1.2.826.0.1.3680043.8.498.1") or d / "dicom",
}


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    cz, sz, cx, sx = np.cos(np.radians(z_deg)), np.sin(np.radians(z_deg)), np.cos(np.radians(x_deg)), np.sin(np.radians(x_deg))
    return np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])


@pytest.fixture(scope="module")
def scan():
    return make_scan(5, 0, PhantomConfig(fov_mm=(80.0, 70.0, 44.0), nodules_per_scan=(1, 1)))


def _oriented(scan, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """The scan's array and LPS affine stored another way. Exact re-orderings keep the world content;
    'oblique' puts the same array on a rotated grid (a different object, same voxels)."""
    volume, affine = scan.volume_hu, scan.affine_lps.copy()
    shape = np.array(volume.shape)
    if orientation == "axial":
        return volume, affine
    if orientation == "flipped":  # columns right-to-left, slices head-to-feet
        flip = np.diag([-1.0, 1.0, -1.0, 1.0])
        flip[:3, 3] = [shape[0] - 1, 0, shape[2] - 1]
        return np.ascontiguousarray(volume[::-1, :, ::-1]), affine @ flip
    if orientation == "sagittal":  # stored as sagittal slices: array axes (y, z, x)
        perm = np.zeros((4, 4))
        perm[1, 0], perm[2, 1], perm[0, 2], perm[3, 3] = 1, 1, 1, 1
        return np.ascontiguousarray(volume.transpose(1, 2, 0)), affine @ perm
    if orientation == "oblique":
        oblique = affine.copy()
        oblique[:3, :3] = _rotation(20.0, 10.0) @ affine[:3, :3]
        return volume, oblique
    raise ValueError(orientation)


def _load(path):
    return LoadCTImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)})["image"]


@pytest.fixture(scope="module")
def written(scan, tmp_path_factory):
    out = {}
    for orientation in ("axial", "flipped", "sagittal", "oblique"):
        volume, affine = _oriented(scan, orientation)
        for fmt, write in WRITERS.items():
            directory = tmp_path_factory.mktemp(f"{orientation}-{fmt}")
            out[orientation, fmt] = (volume, affine, _load(write(directory, volume, affine)))
    return out


@pytest.mark.parametrize("orientation", ["axial", "flipped", "sagittal", "oblique"])
def test_known_world_points_land_on_their_voxels_in_every_format(written, orientation):
    rng = np.random.default_rng(0)
    for fmt in WRITERS:
        volume, affine_lps, image = written[orientation, fmt]
        points = rng.integers(0, volume.shape, size=(50, 3))
        world = voxel_to_world(points, affine_lps, "LPS")  # ground truth: the affine the file was written with
        found = world_to_voxel(world, image.affine, image.meta["space"])
        np.testing.assert_allclose(found, np.round(found), atol=2e-3, err_msg=fmt)
        i, j, k = np.round(found).astype(int).T
        np.testing.assert_array_equal(image[0].numpy()[i, j, k], volume[tuple(points.T)], err_msg=fmt)
        np.testing.assert_allclose(voxel_to_world(found, image.affine, image.meta["space"]), world, atol=1e-3)


def test_the_nodule_patch_agrees_across_formats_and_orientations(scan, written):
    crop = NoduleCrop(patch_size=24, spacing_mm=1.0)
    nodule = scan.nodules[0].nodule
    nodule_voxel = world_to_voxel(nodule.center_world_mm, scan.affine_lps, "LPS")
    reference = crop(written["axial", "nifti"][2], nodule.center_world_mm).numpy()
    assert reference[0, 12, 12, 12] > -700  # the nodule is in the middle of the patch
    for (orientation, fmt), (_, affine_lps, image) in written.items():
        if orientation == "oblique":  # a rotated object: its nodule sits at the rotated point
            center = voxel_to_world(nodule_voxel, affine_lps, "LPS")
            same_orientation = crop(written["oblique", "nifti"][2], center).numpy()
            assert np.abs(crop(image, center).numpy() - same_orientation).max() <= 1.0, fmt
        else:
            assert np.abs(crop(image, nodule.center_world_mm).numpy() - reference).max() <= 1.0, (orientation, fmt)
