"""Gaussian blur with replicated borders, with MONAI's Gaussian kernels.

MONAI's ``GaussianSmooth`` pads with zeros, which in HU (or in [0, 1] after windowing) pulls every
border voxel of a patch towards water/black; a CT patch's border should continue the tissue. On
the CPU the same kernels run as scipy's 1-D correlations (about 13x faster than ``conv3d`` on a
scan-sized volume, same result to float rounding); on a GPU as MONAI's separable filtering.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
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
    if data.device.type != "cpu" or data.requires_grad:
        return separable_filtering(data[None], kernels, mode="replicate")[0]
    out = np.array(data.detach().numpy(), dtype=np.float32)  # a copy: the input is left as it is
    for axis, kernel in enumerate(kernels, start=1):
        if len(kernel) > 1:
            ndi.correlate1d(out, kernel.numpy(), axis=axis, mode="nearest", output=out)
    return torch.from_numpy(out)
