import numpy as np
import pytest

from nodule_bundle.data.phantom import HU_LUNG, PhantomConfig, _draw_nodule_traits, _reference_size, make_scan
from nodule_bundle.measuring.measure import measure_mask

CFG = PhantomConfig(fov_mm=(120.0, 100.0, 60.0), nodules_per_scan=(6, 8))


def _voxel(scan, world):
    return tuple(np.round((np.asarray(world) - scan.origin_mm) / scan.spacing_mm).astype(int))


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = make_scan(3, 0, CFG), make_scan(3, 0, CFG), make_scan(4, 0, CFG)
    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)
    assert a.nodules == b.nodules and a.seriesuid == b.seriesuid
    assert a.seriesuid != c.seriesuid and a.nodules != c.nodules


def test_geometry_tissues_and_nodules():
    scan = make_scan(1, 2, CFG)
    sx, sy, sz = scan.spacing_mm
    assert 0.6 <= sx == sy <= 0.8 and sz in CFG.slice_thicknesses_mm
    vol = scan.volume_hu
    assert vol.dtype == np.int16
    assert np.median(vol[:5, :5, :]) < -950  # air outside the body, in the corners
    assert 6 <= len(scan.nodules) <= 8
    for pn in scan.nodules:
        n = pn.nodule
        assert 2.5 <= n.diameter_mm <= 40.0 and n.malignancy in (0, 1)  # drawn 3-30 mm; lobes and stretch move it
        i, j, k = _voxel(scan, n.center_world_mm)
        assert all(0 <= v < s for v, s in zip((i, j, k), vol.shape))
        centre_hu = float(np.median(vol[i - 1 : i + 2, j - 1 : j + 2, k]))
        assert centre_hu > HU_LUNG + 150, (n, centre_hu)  # denser than the lung around it


def test_lung_parenchyma_is_about_minus_850_hu():
    scan = make_scan(1, 3, CFG)
    centre = np.array(scan.volume_hu.shape) // 2
    # the lungs sit either side of the mediastinum at ~22% of the field of view
    offset = int(0.22 * CFG.fov_mm[0] / scan.spacing_mm[0])
    values = np.concatenate([scan.volume_hu[centre[0] + s * offset, centre[1] - 5 : centre[1] + 5, :].ravel() for s in (-1, 1)])
    assert -920 < np.median(values) < -780


def test_label_depends_on_size_and_margin_with_overlap():
    rng = np.random.default_rng(0)
    diameters = np.exp(rng.uniform(np.log(3), np.log(30), 4000))
    traits = [_draw_nodule_traits(rng, d) for d in diameters]
    malignant = np.array([t[0] for t in traits], bool)
    margins = np.array([t[1] for t in traits])
    assert np.median(diameters[malignant]) > np.median(diameters[~malignant]) + 5
    assert (margins[malignant] != "smooth").mean() > 0.9 and (margins[~malignant] == "smooth").mean() > 0.85
    # size overlaps: small malignant and large benign nodules both exist
    assert (malignant & (diameters < 10)).sum() > 50 and (~malignant & (diameters > 12)).sum() > 50
    assert not any(t[3] for t, m in zip(traits, malignant) if m)  # calcification only in benign


def test_reference_size_is_the_lung_rads_mean_of_the_drawn_body():
    assert _reference_size(5.0, [], np.ones(3))[0] == pytest.approx(10.0, abs=0.2)
    assert _reference_size(5.0, [], np.ones(3))[1] == pytest.approx(4 / 3 * np.pi * 5.0**3, rel=0.02)  # the volume, mm3
    stretched = np.array([1.2, 0.9, 1 / 1.08])
    assert _reference_size(5.0, [], stretched)[0] == pytest.approx(5.0 * (1.2 + 0.9), abs=0.2)  # mean of long, short
    lobe = [(np.array([5.0, 0.0, 0.0]), 2.0)]  # a lobe reaching 7 mm out along x
    assert _reference_size(5.0, lobe, np.ones(3))[0] == pytest.approx((12.0 + 10.0) / 2, abs=0.3)


def test_label_map_holds_each_nodule_body_at_its_centre_and_its_reference_size():
    scan = make_scan(1, 2, CFG)
    assert scan.label_map.shape == scan.volume_hu.shape and scan.label_map.dtype == np.uint8
    assert set(np.unique(scan.label_map)) == set(range(len(scan.nodules) + 1))
    for value, pn in enumerate(scan.nodules, start=1):
        mask = scan.label_map == value
        assert scan.label_map[_voxel(scan, pn.nodule.center_world_mm)] == value
        measured = measure_mask(mask, scan.volume_hu, scan.spacing_mm)
        # on the acquired voxels, as a reader outlines it: within a millimetre of the fine rasterisation
        assert measured.mean_diameter_mm == pytest.approx(pn.nodule.diameter_mm, abs=max(1.0, 0.05 * pn.nodule.diameter_mm))
