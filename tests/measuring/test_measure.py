"""Nodule masks and Lung-RADS measurements on crops with known shapes, blurred like a scanner."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from nodule_bundle.measuring.measure import axial_diameters, measure_nodule, segment_nodule

SPACING = 0.6
N = 64


def _grid():
    return (np.indices((N, N, N), dtype=np.float64) - N // 2) * SPACING


def _scan_like(hu: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(hu, 0.6 / SPACING) + rng.normal(0, 20, hu.shape)


def _ellipsoid(axes_mm, value, base=None):
    x, y, z = _grid()
    hu = np.full((N, N, N), -850.0) if base is None else base
    hu[(x / axes_mm[0]) ** 2 + (y / axes_mm[1]) ** 2 + (z / axes_mm[2]) ** 2 <= 1] = value
    return hu


@pytest.mark.parametrize("diameter", [4.0, 8.0, 16.0])
def test_a_solid_sphere_is_measured_within_half_a_millimetre(diameter):
    m = measure_nodule(_scan_like(_ellipsoid([diameter / 2] * 3, 30.0)), SPACING)
    assert m.mean_diameter_mm == pytest.approx(diameter, abs=0.5)
    assert m.volume_mm3 == pytest.approx(np.pi / 6 * diameter**3, rel=0.25)
    assert m.solid_mean_diameter_mm == pytest.approx(diameter, abs=0.8)


def test_a_calcified_core_does_not_shrink_the_nodule():
    """A 10 mm soft-tissue nodule with a 4 mm core of calcium: its edge is the soft tissue's."""
    hu = _ellipsoid([5.0] * 3, 30.0)
    m = measure_nodule(_scan_like(_ellipsoid([2.0] * 3, 700.0, base=hu)), SPACING)
    assert m.mean_diameter_mm == pytest.approx(10.0, abs=0.6)  # a threshold halfway to the calcium cut 1.5 mm off


def test_long_and_short_axes_of_an_ellipsoid():
    m = measure_nodule(_scan_like(_ellipsoid([7.0, 4.0, 5.0], 30.0)), SPACING)
    assert m.long_axis_mm == pytest.approx(14.0, abs=0.8) and m.short_axis_mm == pytest.approx(8.0, abs=0.8)
    assert m.mean_diameter_mm == pytest.approx(11.0, abs=0.6)


def test_an_attached_vessel_does_not_inflate_the_measurement():
    hu = _ellipsoid([5.0] * 3, 30.0)
    x, y, z = _grid()
    hu[(np.hypot(y, z) <= 1.2) & (x > 0)] = 40.0  # a 2.4 mm vessel leaving the nodule
    m = measure_nodule(_scan_like(hu), SPACING)
    assert m.mean_diameter_mm == pytest.approx(10.0, abs=1.0)


def test_a_lobe_that_ends_in_the_lung_is_kept_and_a_vessel_that_runs_on_is_cut():
    """A thin-centred nodule (a 4 mm ball, its hold 5 mm) with a 6 mm lobe reaching 10 mm from the centre:
    the lobe ends in the lung and is the nodule's, however far beyond the hold. The same lobe drawn
    on as a tube as thick as itself out of the crop is a vessel: cut at the hold."""
    x, y, z = _grid()
    ball = np.sqrt(x**2 + y**2 + z**2) <= 2.0
    lobe = np.sqrt((x - 7.0) ** 2 + y**2 + z**2) <= 3.0
    neck = (np.hypot(y, z) <= 1.8) & (x >= 0) & (x <= 7.0)
    hu = np.where(ball | lobe | neck, 30.0, -850.0)
    lobed = measure_nodule(_scan_like(hu), SPACING)
    assert lobed.long_axis_mm == pytest.approx(12.0, abs=1.0)
    hu[(np.hypot(y, z) <= 3.0) & (x >= 7.0)] = 30.0
    vessel = measure_nodule(_scan_like(hu), SPACING)
    assert vessel.long_axis_mm < 9.0
    held = segment_nodule(_scan_like(hu), SPACING, hold_margin_mm=0.0).mask  # as inference.json has it with a segmenter
    assert vessel.long_axis_mm - axial_diameters(held, SPACING)[0] == pytest.approx(1.0, abs=0.6)  # cut 1 mm nearer the centre


def test_a_lobe_that_a_thin_vessel_carries_out_of_the_crop_is_kept():
    """The same thin-centred nodule and lobe, a 2 mm vessel running on from the lobe out of the crop:
    the lobe, as thick as the nodule, is still the nodule's (not cut at the hold with the vessel); the
    vessel, thinner than the strand opening's ball, is dropped. LIDC-IDRI-0183-n2, a 26 mm elongated
    nodule whose vessel leaves the crop, measured 12.2 mm before."""
    x, y, z = _grid()
    ball = np.sqrt(x**2 + y**2 + z**2) <= 2.0
    lobe = np.sqrt((x - 7.0) ** 2 + y**2 + z**2) <= 3.0
    neck = (np.hypot(y, z) <= 1.8) & (x >= 0) & (x <= 7.0)
    vessel = (np.hypot(y, z) <= 1.0) & (x >= 7.0)
    m = measure_nodule(_scan_like(np.where(ball | lobe | neck | vessel, 30.0, -850.0)), SPACING)
    assert 11.5 <= m.long_axis_mm <= 13.5  # 12 mm, and the vessel's base the strand opening restores (1 mm at most)


def test_a_vessel_the_strand_opening_keeps_is_cut_along_its_axis():
    """A 7 x 5 x 5 mm nodule with a 4 mm vessel passing its end, as thick as the strand opening's ball
    (0.8 of the nodule's 2.5 mm thickness): the opening keeps the vessel's stretch beside the nodule,
    which lengthened the long axis to 7.4 mm and the mean diameter to 6.4 mm. The vessel runs on out of
    the crop as a tube; carried on along its axis into the hold, it is cut there (LIDC-IDRI-0149-n2, a
    5.5 mm nodule measured 7.7 mm before)."""
    x, y, z = _grid()
    nodule = (x / 3.5) ** 2 + (y / 2.5) ** 2 + (z / 2.5) ** 2 <= 1
    vessel = np.hypot(x - (3.5 + 0.6 * 2.0), z) <= 2.0  # along y, its axis 0.6 of its radius beyond the nodule's end
    m = measure_nodule(_scan_like(np.where(nodule | vessel, 30.0, -850.0)), SPACING)
    assert m.mean_diameter_mm == pytest.approx(6.0, abs=0.2)
    assert m.long_axis_mm <= 7.0


def test_a_tail_that_ends_in_the_lung_is_the_nodules_and_a_vessel_that_runs_on_is_not():
    """A 14 mm nodule with a 3 mm thick tail reaching 3 mm out, ending in the lung: the strand opening
    drops the tail as it drops a vessel, but it ends within reach of the nodule and touches nothing cut
    off, so it is given back (as readers outline it: 15.2 mm before). The same tube running on out of
    the crop is a vessel, cut."""
    x, y, z = _grid()
    tail = ((np.hypot(y, z) <= 1.5) & (x > 0) & (x <= 8.5)) | ((x - 8.5) ** 2 + y**2 + z**2 <= 1.5**2)
    hu = _ellipsoid([7.0] * 3, 30.0)
    hu[tail] = 30.0
    assert measure_nodule(_scan_like(hu), SPACING).long_axis_mm == pytest.approx(17.0, abs=0.8)
    hu[(np.hypot(y, z) <= 1.5) & (x > 0)] = 30.0
    assert measure_nodule(_scan_like(hu), SPACING).long_axis_mm < 15.5


def test_a_bubble_beside_the_centre_does_not_make_the_nodule_thin():
    """A 16 mm nodule with a 3 mm air bubble 0.3 mm from its centre and a vessel running on out of the
    crop: the nodule's thickness is its own (the bubble a hole in it), not the 0.3 mm to the bubble, so
    its hold does not cut it down to the centre. LIDC-IDRI-0337-n2, a 28 mm nodule with a lucency
    beside its centroid, measured 10.5 mm before. The strand opening's ball does not fit between the
    bubble and the edge: the cap it drops there is given back as the nodule's own (a short axis of
    14.9 mm before 0.41.0); the long axis runs into the vessel's base, which the opening gives back 1 mm of."""
    x, y, z = _grid()
    nodule = np.sqrt(x**2 + y**2 + z**2) <= 8.0
    vessel = (np.hypot(x, z) <= 1.2) & (y > 0)
    bubble = np.sqrt((x - 1.8) ** 2 + y**2 + z**2) <= 1.5
    hu = np.where(nodule | vessel, 30.0, -850.0)
    hu[bubble] = -1000.0
    m = measure_nodule(_scan_like(hu), SPACING)
    assert m.long_axis_mm == pytest.approx(16.0, abs=1.6) and m.short_axis_mm == pytest.approx(16.0, abs=1.0)


def test_a_part_solid_nodule_has_a_smaller_solid_component():
    hu = _ellipsoid([3.0] * 3, 30.0, base=_ellipsoid([7.0] * 3, -550.0))
    m = measure_nodule(_scan_like(hu), SPACING)
    assert m.solid_mean_diameter_mm == pytest.approx(6.0, abs=1.0)
    assert m.mean_diameter_mm == pytest.approx(14.0, abs=1.0)  # the whole nodule, ground glass included


def test_a_ground_glass_nodule_is_measured_whole():
    m = measure_nodule(_scan_like(_ellipsoid([5.0] * 3, -580.0)), SPACING)
    assert m.mean_diameter_mm == pytest.approx(10.0, abs=0.8) and m.solid_mean_diameter_mm == 0.0


def test_lung_without_a_nodule_measures_nothing():
    m = measure_nodule(_scan_like(np.full((N, N, N), -850.0)), SPACING)
    assert m.mean_diameter_mm == 0.0 and m.volume_mm3 == 0.0


def test_a_40_mm_lobulated_nodule_on_thick_slices_is_measured_whole():
    """The large crop takes over when the nodule reaches the first crop's border (38 mm); sizes come
    from the acquired 2.5 mm slices, as a reader outlines them: the voxel count is the volume."""
    import torch
    from monai.data import MetaTensor

    from nodule_bundle.measuring.transforms import NoduleMeasured

    spacing = np.array([0.7, 0.7, 2.5])
    shape = (120, 120, 32)
    centre = (np.array(shape) - 1) / 2 * spacing
    x, y, z = (np.indices(shape, dtype=np.float64) * spacing[:, None, None, None]) - centre[:, None, None, None]
    body = (x / 15.0) ** 2 + (y / 11.0) ** 2 + (z / 11.0) ** 2 <= 1  # 30 mm across ...
    body |= (x - 14.0) ** 2 + y**2 + z**2 <= 6.0**2  # ... and a lobe: 41 mm long in x
    hu = np.where(body, 30.0, -850.0)
    hu = ndi.gaussian_filter(hu, [0.6 / 0.7, 0.6 / 0.7, 0.42]) + np.random.default_rng(0).normal(0, 15, shape)
    affine = np.diag([*spacing, 1.0])
    image = MetaTensor(torch.from_numpy(hu[None].astype(np.float32)), affine=torch.as_tensor(affine), meta={"space": "RAS"})
    small = [-centre[0] + 30.0, -centre[1] + 30.0, centre[2]]  # lung only: nothing to measure, a 64-voxel crop
    measurer = NoduleMeasured("image", workers=1, crop_key="crop", label_key="labels")
    measured = measurer({"image": image, "center_world_mm": [[-centre[0], -centre[1], centre[2]], small]})
    long_axis = float(axial_long_axis(body, spacing))
    assert measured["measured_long_axis_mm"][0] == pytest.approx(long_axis, abs=1.0)
    assert measured["measured_volume_mm3"][0] == pytest.approx(body.sum() * spacing.prod(), rel=0.1)
    crops = measured["crop"]  # one size for every nodule, so that a scan's samples collate: the large one resampled
    assert [tuple(c.shape) for c in crops] == [(2, 64, 64, 64)] * 2 and crops[0].dtype == torch.int16
    assert np.diag(np.asarray(crops[0].affine))[:3] == pytest.approx([0.6 * 112 / 64] * 3, rel=1e-3)
    labelled = np.asarray(measured["labels"][0]) == 1  # the label map from the kept crop still covers the whole nodule
    assert (labelled & body).sum() / body.sum() > 0.9 and (labelled & ~body).sum() < 0.1 * body.sum()


@pytest.mark.slow
def test_a_part_solid_nodules_ground_glass_stays_apart_from_the_chest_wall():
    """A 30 mm part-solid phantom nodule in a corner of the chest wall (follow-up phantom, patient 71's
    third scan): its ground glass's low threshold reaches the wall's blurred edge, and joined to it the
    nodule measured 46 mm, its solid part 36 mm (the wall's); kept apart, both within 2 and 1 mm of the reference."""
    from nodule_bundle.data.followup_phantom import FollowupConfig, make_followup_scan
    from nodule_bundle.measuring.transforms import NoduleMeasured

    scan = make_followup_scan(0, 71, 2, fcfg=FollowupConfig(timepoints=3))
    nodule = next(n for n in scan.nodules if n.nodule.texture == "part-solid" and n.nodule.diameter_mm > 25.0)
    measured = NoduleMeasured("image", workers=1)({"image": scan.image(), "center_world_mm": [nodule.nodule.center_world_mm]})
    assert measured["measured_mean_diameter_mm"][0] == pytest.approx(nodule.nodule.diameter_mm, abs=2.0)
    assert measured["measured_solid_mean_diameter_mm"][0] == pytest.approx(nodule.solid_mm, abs=1.0)


def test_a_solid_nodule_on_the_chest_wall_is_not_read_as_part_solid_by_the_walls_blurred_edge():
    """A 6 mm solid nodule against the chest wall, the wall's edge blurred over several millimetres (an
    oblique surface across thick slices, as at the lung's apex): around the nodule joined to the wall
    that ramp reads as a ground-glass plateau, whose low threshold took the wall in (18 mm measured; a
    real-geometry validation nodule at the apex, 7.5 mm, measured 16.8 mm). The wall, thicker than the
    nodule, is no ground glass around it."""
    from nodule_bundle.measuring.measure import measure_mask, segment_nodule

    x, y, z = _grid()
    hu = np.where((x**2 + y**2 + z**2 <= 3.0**2) | (z >= 3.5), 30.0, -850.0)
    hu = ndi.gaussian_filter(hu, (0.6 / SPACING, 0.6 / SPACING, 3.0 / SPACING)) + np.random.default_rng(0).normal(0, 15, hu.shape)
    measured = measure_mask(segment_nodule(hu, SPACING).mask, hu, SPACING)
    assert measured.mean_diameter_mm == pytest.approx(6.0, abs=0.7)


def axial_long_axis(mask, spacing):
    from nodule_bundle.measuring.measure import axial_diameters

    return axial_diameters(mask, tuple(spacing))[0]


def _acquired_scan(body: np.ndarray, spacing: np.ndarray, extra: np.ndarray | None = None):
    """``body`` (and the soft tissue ``extra``) drawn voxel by voxel on the acquired grid, blurred by a
    0.6 mm point spread and a 2.5 mm slice profile, with noise: a MetaTensor (RAS) and the body's centre (LPS world mm)."""
    import torch
    from monai.data import MetaTensor

    tissue = body if extra is None else body | extra
    hu = np.where(tissue, 30.0, -850.0)
    hu = ndi.gaussian_filter(hu, [0.6 / spacing[0], 0.6 / spacing[1], 2.5 / 2.355 / spacing[2]]) + np.random.default_rng(1).normal(0, 15, hu.shape)
    image = MetaTensor(torch.from_numpy(hu[None].astype(np.float32)), affine=torch.as_tensor(np.diag([*spacing, 1.0])), meta={"space": "RAS"})
    return image, (np.argwhere(body).mean(0) * spacing * [-1, -1, 1]).tolist()


def _lobulated(shape, spacing, centre_mm):
    x, y, z = (np.indices(shape, dtype=np.float64) * spacing[:, None, None, None]) - np.asarray(centre_mm)[:, None, None, None]
    body = (x / 6.5) ** 2 + (y / 4.5) ** 2 + (z / 5.0) ** 2 <= 1
    return body | ((x - 5.0) ** 2 + (y - 2.5) ** 2 + z**2 <= 4.0**2), x


def test_the_edge_is_decided_on_the_acquired_voxels():
    """A lobulated nodule drawn voxel by voxel on 0.75 x 0.75 x 2.5 mm slices (as the real-geometry
    outlines are) is measured on those voxels: its voxel count within 4 %, its long axis within a pixel."""
    from nodule_bundle.measuring.transforms import NoduleMeasured

    spacing = np.array([0.75, 0.75, 2.5])
    body, _ = _lobulated((72, 72, 20), spacing, (27.0, 27.0, 25.0))
    image, centre = _acquired_scan(body, spacing)
    measured = NoduleMeasured("image", workers=1)({"image": image, "center_world_mm": [centre]})
    assert measured["measured_volume_mm3"][0] == pytest.approx(body.sum() * spacing.prod(), rel=0.04)
    assert measured["measured_long_axis_mm"][0] == pytest.approx(axial_long_axis(body, spacing), abs=0.75)


def test_a_lobe_that_runs_out_of_the_first_crop_is_measured_in_the_large_one():
    """An 11 mm core with an 8 mm thick lobe reaching 26 mm out, ending in the lung: the first crop (38 mm)
    cuts the lobe at the hold, as it would a vessel, but the cut part is as thick as a lobe, so the large
    crop (67 mm) measures the nodule whole. The same lobe drawn on to the scan's edge runs out of the
    large crop too: a vessel, cut there."""
    from nodule_bundle.measuring.transforms import NoduleMeasured

    spacing = np.array([0.7, 0.7, 1.0])
    shape = (120, 120, 80)
    x, y, z = (np.indices(shape, dtype=np.float64) * spacing[:, None, None, None]) - np.array([42.0, 42.0, 40.0])[:, None, None, None]
    core = x**2 + y**2 + z**2 <= 5.5**2
    lobe = ((np.hypot(y, z) <= 4.0) & (x >= 0) & (x <= 22.0)) | ((x - 22.0) ** 2 + y**2 + z**2 <= 4.0**2)
    image, _ = _acquired_scan(core | lobe, spacing)
    centre = [-42.0, -42.0, 40.0]  # LPS: the core's
    measurer = NoduleMeasured("image", workers=1)
    first = segment_nodule(measurer.cropper(image, np.asarray(centre))[0].numpy(), measurer.spacing_mm, larger_crop=True)
    assert first.cut_short and axial_diameters(first.mask, measurer.spacing_mm)[0] < 20.0
    measured = measurer({"image": image, "center_world_mm": [centre]})
    assert measured["measured_long_axis_mm"][0] == pytest.approx(axial_long_axis(core | lobe, spacing), abs=1.0)
    vessel, _ = _acquired_scan(core | lobe | ((np.hypot(y, z) <= 4.0) & (x >= 0)), spacing)
    assert measurer({"image": vessel, "center_world_mm": [centre]})["measured_long_axis_mm"][0] < 20.0


def test_a_concave_mass_whose_centre_lies_in_its_notch_is_measured_whole():
    """A 38 mm U-shaped mass (two 18 mm lobes joined by a bar), given by its centroid, which lies in the
    2 mm gap between the lobes (as a concave mass's centroid lies in its notch): held there one voxel
    thick, the first crop kept 4 mm of it and cut the rest as tissue running on out of the crop. Held
    so thin, the nodule is in a notch of itself, and the large crop measures it whole."""
    from nodule_bundle.measuring.transforms import NoduleMeasured

    spacing = np.array([0.7, 0.7, 1.0])
    shape = (120, 120, 80)
    x, y, z = (np.indices(shape, dtype=np.float64) * spacing[:, None, None, None]) - np.array([42.0, 42.0, 40.0])[:, None, None, None]
    lobes = ((x - 10.0) ** 2 + y**2 + z**2 <= 9.0**2) | ((x + 10.0) ** 2 + y**2 + z**2 <= 9.0**2)
    body = lobes | ((np.hypot(y - 9.0, z) <= 4.5) & (np.abs(x) <= 10.0))
    image, centroid = _acquired_scan(body, spacing)
    measured = NoduleMeasured("image", workers=1)({"image": image, "center_world_mm": [centroid]})
    assert measured["measured_long_axis_mm"][0] == pytest.approx(axial_long_axis(body, spacing), abs=1.0)
    assert measured["measured_volume_mm3"][0] == pytest.approx(body.sum() * spacing.prod(), rel=0.25)


def test_the_acquired_edge_takes_no_voxel_of_what_the_segmentation_cut_off():
    """Tissue touching the nodule that its segmentation cut off (a wall, a vessel) stays out, though
    as dense as the nodule; the nodule's own edge voxels above the threshold come in."""
    from nodule_bundle.measuring.measure import edge_on_acquired_grid

    x, y, z = np.indices((24, 24, 12)) - np.array([12, 12, 6])[:, None, None, None]
    body = x**2 + y**2 + (2 * z) ** 2 <= 36
    wall = (x >= 4) & ~body  # the chest wall, pressed against the nodule
    hu = np.where(body | wall, 30.0, -850.0)
    region = body & (x > -6)  # the fine mask carried over a voxel short at one end
    edge = edge_on_acquired_grid(region, hu, -410.0, attached=wall)
    assert (edge == body).all()


def test_the_acquired_edge_grows_as_far_as_it_is_told_into_dense_voxels():
    """A learned outline that stops two voxels short of a lobe's tip reaches it with ``grow_voxels=2``
    (the learned mask's edge), not with one (the threshold mask's); what is attached stays out either way."""
    from nodule_bundle.measuring.measure import edge_on_acquired_grid

    x, y, z = np.indices((30, 24, 12)) - np.array([12, 12, 6])[:, None, None, None]
    ball = x**2 + y**2 + (2 * z) ** 2 <= 36
    lobe = (x >= 0) & (x <= 10) & (np.abs(y) <= 1) & (np.abs(z) <= 1)  # a tail out to x = 10
    vessel = (x <= -6) & (np.abs(y - 3) <= 1) & (np.abs(z) <= 1) & ~ball
    hu = np.where(ball | lobe | vessel, 30.0, -850.0)
    region = (ball | lobe) & (x <= 8)
    one, two = (edge_on_acquired_grid(region, hu, -410.0, attached=vessel, grow_voxels=k) for k in (1, 2))
    assert (one == (region | ((ball | lobe) & (x == 9)))).all()  # one voxel further only
    assert (two == (ball | lobe)).all()  # the tip, not the vessel


@pytest.mark.parametrize("centre", [(32, 32, 32), (6, 40, 58)])
@pytest.mark.parametrize("radius", [3.5, 8.0])
def test_the_wall_is_opened_on_the_box_it_depends_on_with_the_same_result(centre, radius):
    """Where the nodule's region is, the chest wall computed on the region's box grown by what it
    depends on is scipy's opening by a ball of the whole crop, its border continued outwards (edge
    padding, and the wall running on beyond that: balls beyond the crop's border count)."""
    from nodule_bundle.measuring.measure import _wall

    dense = ndi.gaussian_filter(np.random.default_rng(1).normal(size=(N, N, N)), 5) > 0.0
    dense[:, :, -4:] = True  # a wall thinner than the ball within the crop: a wall all the same, as it runs on beyond
    region = np.linalg.norm(np.indices((N, N, N)) - np.reshape(centre, (3, 1, 1, 1)), axis=0) <= 9.0
    reach = int(np.ceil(radius)) + 1
    ball = np.linalg.norm(np.indices((2 * reach + 1,) * 3) - reach, axis=0) <= radius
    padded = ndi.binary_dilation(ndi.binary_erosion(np.pad(dense, reach, mode="edge"), ball, border_value=1), ball)
    whole = padded[reach:-reach, reach:-reach, reach:-reach]
    assert whole[region].any() and not whole[region].all()
    np.testing.assert_array_equal(_wall(dense, radius, region), whole & region)


def test_the_solid_component_is_its_largest_connected_part():
    """A 16 mm ground-glass mask touched at opposite edges by two dense specks (a vessel's or a
    spicule's base), then reaching into the chest wall, and a 4 mm solid core: the solid component is
    the core, not the span between the specks nor the wall; specks at the edge alone are none (the
    nodule reads as ground glass)."""
    from nodule_bundle.measuring.measure import measure_mask

    x, y, z = _grid()
    hu = np.full((N, N, N), -600.0)
    mask = x**2 + y**2 + z**2 <= 8.0**2
    for centre in ((-7.5, 0.0, 0.0), (7.5, 0.0, 0.0)):
        hu[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= 0.8**2] = 40.0
    assert measure_mask(mask, hu, SPACING).solid_mean_diameter_mm == 0.0  # not 16 mm across, nor one speck at the edge
    hu[x**2 + y**2 + z**2 <= 2.0**2] = 40.0
    assert measure_mask(mask, hu, SPACING).solid_mean_diameter_mm == pytest.approx(4.0, abs=0.7)
    # the mask's edge reaches 2 mm into the chest wall: a larger dense part than the core, but mostly outside
    hu[x > 6.0] = 40.0
    assert measure_mask(mask, hu, SPACING).solid_mean_diameter_mm == pytest.approx(4.0, abs=0.7)
    hu[x**2 + y**2 + z**2 <= 2.0**2] = -600.0
    assert measure_mask(mask, hu, SPACING).solid_mean_diameter_mm == 0.0  # not the wall, nor the speck
