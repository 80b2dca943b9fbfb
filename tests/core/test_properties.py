"""Property-based tests (hypothesis) of the geometry core: world <-> voxel round trips for random
affines, crops around random centres near the borders, and the HU normalisation's range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor

from nodule_bundle.core.geometry import voxel_to_world, world_to_voxel
from nodule_bundle.preprocessing.transforms import CTPreprocess, NoduleCrop, NoduleOutsideVolumeError

FAST = settings(max_examples=60, deadline=None)


@st.composite
def affines(draw) -> np.ndarray:
    """A voxel -> world affine: a random rotation (and possibly a flip), spacing 0.3-5 mm, any origin."""
    q, _ = np.linalg.qr(np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=(3, 3)))  # orthonormal
    spacing = np.array(draw(st.lists(st.floats(0.3, 5.0), min_size=3, max_size=3)))
    affine = np.eye(4)
    affine[:3, :3] = q * spacing
    affine[:3, 3] = draw(st.lists(st.floats(-500, 500), min_size=3, max_size=3))
    return affine


@FAST
@given(affines(), st.lists(st.floats(-400, 400), min_size=3, max_size=3), st.sampled_from(["RAS", "LPS"]))
def test_world_voxel_round_trip(affine, point, space):
    voxel = world_to_voxel(point, affine, space)
    np.testing.assert_allclose(voxel_to_world(voxel, affine, space), point, atol=1e-6)
    many = np.array([point, np.add(point, 10.0)])
    np.testing.assert_allclose(voxel_to_world(world_to_voxel(many, affine, space), affine, space), many, atol=1e-6)


@st.composite
def images(draw) -> MetaTensor:
    shape = draw(st.tuples(st.integers(6, 24), st.integers(6, 24), st.integers(3, 12)))
    spacing = draw(st.tuples(st.floats(0.5, 1.0), st.floats(0.5, 1.0), st.floats(1.0, 3.0)))
    values = np.random.default_rng(draw(st.integers(0, 2**16))).integers(-1000, 400, shape).astype(np.float32)
    affine = np.diag([*[-s for s in spacing[:2]], spacing[2], 1.0])  # NIfTI-style RAS affine, x and y flipped
    affine[:3, 3] = draw(st.tuples(st.floats(-100, 100), st.floats(-100, 100), st.floats(-300, 0)))
    return MetaTensor(torch.from_numpy(values[None]), affine=torch.as_tensor(affine), meta={"space": "RAS"})


@FAST
@given(images(), st.tuples(st.floats(-0.5, 1.0), st.floats(-0.5, 1.0), st.floats(-0.5, 1.0)), st.integers(4, 16), st.floats(0.5, 2.0))
def test_crops_near_borders_pad_and_never_fail(image, fraction, patch_size, spacing_mm):
    shape = np.array(image.shape[1:])
    voxel = np.array(fraction) * shape - 0.5 * (np.array(fraction) < 0)  # anywhere from half a voxel out to the far edge
    voxel = np.clip(voxel, -0.5, shape - 0.5)
    centre = voxel_to_world(voxel, image.affine, "RAS")
    patch = NoduleCrop(patch_size, spacing_mm)(image, centre)
    assert patch.shape == (1, patch_size, patch_size, patch_size)
    low, high = float(image.min()), float(image.max())
    assert torch.isfinite(patch).all() and low - 1e-3 <= float(patch.min()) and float(patch.max()) <= high + 1e-3  # border repeated


@FAST
@given(images(), st.sampled_from([-1, 1]), st.integers(0, 2), st.floats(1.0, 50.0))
def test_centres_outside_the_image_are_refused(image, side, axis, beyond):
    shape = np.array(image.shape[1:], dtype=float)
    voxel = (shape - 1) / 2
    voxel[axis] = -0.5 - beyond if side < 0 else shape[axis] - 0.5 + beyond
    with pytest.raises(NoduleOutsideVolumeError, match="outside the image"):
        NoduleCrop(8, 1.0)(image, voxel_to_world(voxel, image.affine, "RAS"))


@FAST
@given(st.floats(-3000, 3000), st.floats(10, 4000), st.integers(0, 2**16), st.floats(0.0, 1.5))
def test_hu_normalisation_stays_in_the_unit_range(low, width, seed, sigma_mm):
    hu = np.random.default_rng(seed).uniform(-4000, 4000, (1, 9, 9, 9)).astype(np.float32)
    out = CTPreprocess(hu_window=(low, low + width), denoise_sigma_mm=sigma_mm)(torch.from_numpy(hu))
    assert out.dtype == torch.float32 and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    below, above = hu < low, hu > low + width
    if sigma_mm == 0.0:
        assert bool((out[torch.from_numpy(below)] == 0).all()) and bool((out[torch.from_numpy(above)] == 1).all())


@FAST
@given(st.integers(0, 2**32 - 1), st.floats(0.5, 4.0), st.floats(-0.5, 0.5), st.booleans())
def test_the_distance_transform_is_scipys_to_the_last_bit(seed, smoothness, level, strided):
    """``core.distance.distance_transform`` (the ``edt`` package) equals scipy's exact EDT bit for bit,
    on blobs of any shape, a strided view too; where nothing is outside, inf."""
    from scipy import ndimage as ndi

    from nodule_bundle.core.distance import distance_transform

    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.normal(size=tuple(rng.integers(2, 40, size=3))), smoothness) > level
    mask = mask[::2] if strided else mask
    if mask.all():
        assert np.isinf(distance_transform(mask)).all()
    else:
        np.testing.assert_array_equal(distance_transform(mask), ndi.distance_transform_edt(mask))


@FAST
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.6), st.floats(0.5, 6.0))
def test_the_measurements_boxed_distance_transforms_equal_scipys_on_the_whole_crop(seed, density, reach):
    """The segmentation's distance transforms, computed on the mask's box only, give scipy's values on
    the whole array: inside the mask everywhere, outside it up to ``reach`` (beyond: inf)."""
    from scipy import ndimage as ndi

    from nodule_bundle.measuring.measure import _distance_inside, _distance_outside

    rng = np.random.default_rng(seed)
    mask = np.zeros((20, 18, 16), bool)
    low = rng.integers(0, 10, size=3)
    mask[tuple(slice(a, a + int(n)) for a, n in zip(low, rng.integers(1, 9, size=3)))] = True
    mask &= rng.random(mask.shape) > density
    np.testing.assert_allclose(_distance_inside(mask), ndi.distance_transform_edt(mask))
    outside = _distance_outside(mask, reach)
    if mask.any():
        full = ndi.distance_transform_edt(~mask)
        near = full <= reach
        np.testing.assert_allclose(outside[near], full[near])
        assert np.all(outside[~near] > reach)
    else:
        assert np.all(np.isinf(outside))
