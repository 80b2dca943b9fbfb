"""The exact Euclidean distance transform of a binary mask on unit voxels, fast: what the openings and
closings of the nodule segmentation and the lung mask are made of."""

from __future__ import annotations

import edt
import numpy as np


def distance_transform(mask: np.ndarray) -> np.ndarray:
    """Voxel distance from each voxel of ``mask`` to the nearest false voxel: ``scipy.ndimage.distance_transform_edt(mask)``
    to the last bit, computed by the ``edt`` package (on 0/1 bytes: 3-10x faster): its squared distances
    are whole numbers, exact in its float32, and their roots are taken in float64 as scipy's are. (Where
    ``mask`` has no false voxel, inf, where scipy's answer is meaningless.)"""
    squared = edt.edtsq(np.ascontiguousarray(mask, dtype=bool).view(np.uint8), black_border=False, parallel=1)
    return np.sqrt(squared.astype(np.float64))
