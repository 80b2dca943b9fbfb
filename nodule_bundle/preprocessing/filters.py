"""Gaussian blur with replicated borders, from MONAI's separable filtering.

MONAI's ``GaussianSmooth`` pads with zeros, which in HU (or in [0, 1] after windowing) pulls every
border voxel of a patch towards water/black; a CT patch's border should continue the tissue.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import gaussian_1d, separable_filtering


def gaussian_blur(image: torch.Tensor, sigma_voxels: Sequence[float] | float, truncated: float = 4.0) -> torch.Tensor:
    """Blur a channel-first ``[C, *spatial]`` tensor; ``sigma_voxels`` per spatial axis (0 leaves that axis)."""
    spatial = image.ndim - 1
    sigmas = [float(s) for s in sigma_voxels] if isinstance(sigma_voxels, Sequence) else [float(sigma_voxels)] * spatial
    if len(sigmas) != spatial:
        raise ValueError(f"need {spatial} sigmas, got {len(sigmas)}")
    one = torch.ones(1, dtype=torch.float32, device=image.device)
    kernels = [gaussian_1d(torch.tensor(s, device=image.device), truncated, approx="erf") if s > 0 else one for s in sigmas]
    data = torch.as_tensor(image, dtype=torch.float32)
    return separable_filtering(data[None], kernels, mode="replicate")[0]
