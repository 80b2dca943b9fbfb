"""Masks carried between grids by nearest sampling over the box they reach, against the whole grid."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from nodule_bundle.measuring.transforms import nearest_over_mask, reached_box

NEAREST = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)


def _affine(spacing, origin, rotation_deg=0.0):
    angle = np.deg2rad(rotation_deg)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag(spacing)
    affine[:3, 3] = origin
    return torch.as_tensor(affine)


@pytest.mark.parametrize(
    "source_spacing, target_spacing, rotation",
    [((0.6, 0.6, 0.6), (0.7, 0.7, 2.5), 0.0), ((0.7, 0.7, 2.5), (0.6, 0.6, 0.6), 0.0), ((0.7, 0.7, 5.0), (0.6, 0.6, 0.6), 0.0),
     ((0.8, 0.8, 1.0), (0.6, 0.6, 0.6), 17.0)],
)
def test_sampling_over_the_reached_box_equals_sampling_the_whole_grid(source_spacing, target_spacing, rotation):
    """Coarse slices onto a fine grid reach furthest (half a 5 mm slice is four fine voxels): a box
    without that half voxel would lose the mask's outer slices. The origins are not whole multiples of
    the spacings, as a crop centred on a nodule's is not: a point exactly halfway between two voxels
    goes to either as float rounding falls, on the whole grid and on the box alike."""
    rng = np.random.default_rng(0)
    source_shape = (40, 40, 20)
    shape = tuple(int(np.ceil(n * a / b)) + 2 for n, a, b in zip(source_shape, source_spacing, target_spacing))  # the same field of view
    source_affine, target_affine = _affine(source_spacing, (0.13, 0.37, 0.21), rotation), _affine(target_spacing, (0.0, 0.0, 0.0))
    for _ in range(5):
        mask = np.zeros(source_shape, dtype=np.float32)
        low = rng.integers(4, 10, 3)
        mask[tuple(slice(a, a + int(rng.integers(5, 9))) for a in low)] = 1.0  # wider than the coarser grid's slices
        other = (rng.random(mask.shape) < 0.3).astype(np.float32)
        image = MetaTensor(torch.from_numpy(np.stack([mask, other])), affine=source_affine)
        whole = NEAREST(image, dst_affine=target_affine, spatial_size=shape).numpy() > 0.5
        boxed = nearest_over_mask(NEAREST, image, target_affine, shape)
        assert whole[0].any() and np.array_equal(boxed[0], whole[0])
        box = reached_box(mask > 0, source_affine, target_affine, shape)
        assert np.array_equal(boxed[1][box], whole[1][box]) and boxed[1].sum() == whole[1][box].sum()


def test_an_empty_mask_or_one_off_the_grid_reaches_nothing():
    affine = _affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert reached_box(np.zeros((8, 8, 8), bool), affine, affine, (8, 8, 8)) is None
    far = _affine((1.0, 1.0, 1.0), (100.0, 0.0, 0.0))
    mask = np.zeros((8, 8, 8), bool)
    mask[4, 4, 4] = True
    assert reached_box(mask, far, affine, (8, 8, 8)) is None
    image = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), affine=far)
    assert not nearest_over_mask(NEAREST, image, affine, (8, 8, 8)).any()
