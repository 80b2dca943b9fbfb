import numpy as np
import pytest

from nodule_bundle.core.geometry import LPS_TO_RAS, lps_to_ras, voxel_to_world, world_to_voxel


def _oblique_affine_lps() -> np.ndarray:
    """Anisotropic spacing, rotated about z and tilted, with a non-zero origin."""
    a, b = np.deg2rad(20), np.deg2rad(7)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.7, 0.75, 2.5])
    aff[:3, 3] = [-180.2, -95.5, -310.0]
    return aff


def test_known_point_lps_and_ras_frames_agree():
    aff_lps = _oblique_affine_lps()
    voxel = np.array([10.0, 20.0, 30.0])
    world = aff_lps[:3, :3] @ voxel + aff_lps[:3, 3]  # the definition of the affine
    np.testing.assert_allclose(world_to_voxel(world, aff_lps, space="LPS"), voxel, atol=1e-9)
    np.testing.assert_allclose(world_to_voxel(world, LPS_TO_RAS @ aff_lps, space="RAS"), voxel, atol=1e-9)
    np.testing.assert_allclose(voxel_to_world(voxel, LPS_TO_RAS @ aff_lps), world, atol=1e-9)


def test_round_trip_many_points():
    aff = LPS_TO_RAS @ _oblique_affine_lps()
    pts = np.random.default_rng(0).uniform(-200, 200, (50, 3))
    np.testing.assert_allclose(voxel_to_world(world_to_voxel(pts, aff), aff), pts, atol=1e-8)


def test_lps_to_ras_flips_x_and_y_only():
    np.testing.assert_array_equal(lps_to_ras([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])


def test_rejects_malformed_input():
    with pytest.raises(ValueError, match="3 coordinates"):
        world_to_voxel([1.0, 2.0], np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        world_to_voxel([1.0, 2.0, 3.0], np.eye(3))
