"""World-millimetre <-> voxel conversion: the one place where coordinate frames meet.

Nodule coordinates in this project are *world millimetres in the scanner's LPS frame* (DICOM patient
coordinates, what ITK and LUNA16's ``annotations.csv`` use). MONAI's readers hand images over with an
affine that maps voxel indices to world coordinates in the frame named by ``meta["space"]`` (RAS by
default). Every conversion goes through :func:`world_to_voxel` / :func:`voxel_to_world` with that affine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.utils import SpaceKeys

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def _as_points(points: Sequence[float] | np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1] != 3:
        raise ValueError(f"expected points with 3 coordinates, got shape {pts.shape}")
    return pts


def _affine_lps(affine: np.ndarray | torch.Tensor, space: str = SpaceKeys.RAS) -> np.ndarray:
    """The image's voxel->world affine, expressed in the LPS frame."""
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {aff.shape}")
    return LPS_TO_RAS @ aff if str(space).upper() == SpaceKeys.RAS.value else aff


def world_to_voxel(
    center_world_mm: Sequence[float] | np.ndarray, affine: np.ndarray | torch.Tensor, space: str = SpaceKeys.RAS
) -> np.ndarray:
    """Continuous voxel indices of LPS world points; ``affine`` maps voxels to the frame ``space``.

    Accepts one point ``(3,)`` or many ``(N, 3)``; returns the same shape (float, not rounded).
    """
    pts = _as_points(center_world_mm)
    inv = np.linalg.inv(_affine_lps(affine, space))
    return pts @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_world(
    center_voxel: Sequence[float] | np.ndarray, affine: np.ndarray | torch.Tensor, space: str = SpaceKeys.RAS
) -> np.ndarray:
    """LPS world millimetres of (continuous) voxel indices; the inverse of :func:`world_to_voxel`."""
    idx = _as_points(center_voxel)
    aff = _affine_lps(affine, space)
    return idx @ aff[:3, :3].T + aff[:3, 3]


def lps_to_ras(points_lps_mm: Sequence[float] | np.ndarray) -> np.ndarray:
    """Flip world points between the LPS (DICOM/ITK) and RAS (NIfTI/MONAI) frames."""
    return _as_points(points_lps_mm) * np.array([-1.0, -1.0, 1.0])


def voxel_size(affine: torch.Tensor | np.ndarray) -> np.ndarray:
    """The voxel edge lengths (mm) of a voxel -> world ``affine``."""
    aff = np.asarray(affine, dtype=np.float64)
    return np.linalg.norm(aff[:3, :3], axis=0)
