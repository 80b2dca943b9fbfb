"""Crops and preprocessing: a physical nodule crop (crop first, resample only the crop) and CT
preprocessing (HU window, denoising, optional deblurring, equalisation and edges).

Array transforms take channel-first ``MetaTensor`` images; each has a dictionary twin (``...d``).
All geometry goes through :mod:`nodule_bundle.core.geometry`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import HistogramNormalize, MapTransform, ScaleIntensityRange, SobelGradients, SpatialCrop, SpatialResample, Transform
from monai.utils import SpaceKeys

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.geometry import LPS_TO_RAS, lps_to_ras, voxel_size, world_to_voxel
from nodule_bundle.core.threads import on_threads
from nodule_bundle.preprocessing.filters import gaussian_blur


class NoduleOutsideVolumeError(NoduleBundleError):
    """A nodule centre that does not lie inside the image it is said to be in."""


def _filename(img: torch.Tensor) -> str:
    return str(img.meta.get("filename_or_obj", "<image>")) if isinstance(img, MetaTensor) else "<image>"


class NoduleCrop(Transform):
    """Cut an isotropic cube centred on a world point: crop first, then resample only the crop.

    Input: ``[C, X, Y, Z]`` MetaTensor with its voxel->world affine (frame in ``meta["space"]``).
    Output: ``[C, n, n, n]`` with ``n = patch_size``, voxel size ``spacing_mm``, axes along the RAS
    world axes, and the world point at the patch centre (voxel ``(n - 1) / 2``). Regions beyond the
    scan repeat its border (air at the edge of a CT field of view).

    Args:
        patch_size: voxels per side (the bundle's: ``patch_size`` of its configs).
        spacing_mm: isotropic output voxel size in mm (the bundle's: ``patch_spacing_mm``).
        mode: interpolation for :class:`monai.transforms.SpatialResample`.
    """

    def __init__(self, patch_size: int, spacing_mm: float, mode: str = "bilinear"):
        self.patch_size, self.spacing_mm = int(patch_size), float(spacing_mm)
        self.resample = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float32)

    def __call__(self, img: MetaTensor, center_world_mm: Sequence[float]) -> MetaTensor:
        box = self.source_box(img, center_world_mm)
        center, space = np.asarray(center_world_mm, dtype=np.float64), img.meta.get("space", SpaceKeys.RAS)
        dst = np.diag([self.spacing_mm] * 3 + [1.0])  # RAS-aligned patch axes, centre on the point
        dst[:3, 3] = lps_to_ras(center) - self.spacing_mm * (self.patch_size - 1) / 2.0
        if str(space).upper() != SpaceKeys.RAS.value:
            dst = LPS_TO_RAS @ dst
        return self.resample(box, dst_affine=torch.as_tensor(dst), spatial_size=(self.patch_size,) * 3)

    def source_box(self, img: MetaTensor, center_world_mm: Sequence[float]) -> MetaTensor:
        """The part of ``img`` (its own grid) that the patch around ``center_world_mm`` covers."""
        space = img.meta.get("space", SpaceKeys.RAS)
        center = np.asarray(center_world_mm, dtype=np.float64)
        shape = np.array(img.shape[1:])
        center_voxel = world_to_voxel(center, img.affine, space)
        tolerance = 1e-6  # a centre on the outer edge of a border voxel, give or take rounding, is inside
        if np.any(center_voxel < -0.5 - tolerance) or np.any(center_voxel > shape - 0.5 + tolerance):
            raise NoduleOutsideVolumeError(
                f"{_filename(img)}: nodule at world {np.round(center, 1).tolist()} mm (LPS) is outside the "
                f"image (voxel {np.round(center_voxel, 1).tolist()}, image size {shape.tolist()})"
            )
        half_mm = self.spacing_mm * self.patch_size / 2.0
        corners = center + half_mm * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        corner_voxels = world_to_voxel(corners, img.affine, space)
        start = np.clip(np.floor(corner_voxels.min(0)) - 1, 0, shape).astype(int)
        end = np.clip(np.ceil(corner_voxels.max(0)) + 2, 0, shape).astype(int)
        return SpatialCrop(roi_start=start, roi_end=end)(img)


class NoduleCropd(MapTransform):
    """Dictionary twin of :class:`NoduleCrop`: one sample per nodule, as MONAI's multi-sample crops.

    ``data[center_key]`` is one centre ``(3,)`` or several ``(N, 3)`` in LPS world mm. Returns a list of
    N dicts: ``keys`` cropped around each centre, ``center_key`` set to that centre, ``center_voxel``
    its continuous voxel index in the source image, and each key of ``per_nodule_keys`` (present in
    ``data`` as length-N sequences, e.g. ``nodule_id``) indexed; every other key is shared. The
    nodules are cropped side by side on ``workers`` threads (:func:`on_threads`).

    A scan item without any centre gives one record instead: its shared fields, no ``keys``, and
    the first key's metadata as ``scan_meta``, so a scan without nodules still reaches the report
    (:func:`~nodule_bundle.evaluation.engine.collate_nodules`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int,
        spacing_mm: float,
        center_key: str = "center_world_mm",
        per_nodule_keys: Sequence[str] = ("nodule_id",),
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
        workers: int | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        self.center_key, self.per_nodule_keys = center_key, tuple(per_nodule_keys)
        self.cropper = NoduleCrop(patch_size, spacing_mm, mode)
        self.workers = workers

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        centers = np.asarray(data[self.center_key], dtype=np.float64)
        several, rows = centers.ndim == 2, centers.reshape(-1, 3)
        first = data[self.first_key(dict(data))]
        shared = {k: v for k, v in data.items() if k not in self.keys}
        keys = list(self.key_iterator(dict(data)))
        if len(rows) == 0:
            return [{**shared, "scan_meta": dict(first.meta)}]

        def sample(i: int) -> dict:
            center = rows[i]
            out = {**shared, **{key: self.cropper(data[key], center) for key in keys}}
            out[self.center_key] = torch.as_tensor(center)
            out["center_voxel"] = torch.as_tensor(world_to_voxel(center, first.affine, first.meta.get("space", "RAS")))
            if several:
                out.update({key: data[key][i] for key in self.per_nodule_keys if key in data})  # type: ignore[index]
            return out

        return on_threads(sample, range(len(rows)), self.workers)


class CTPreprocess(Transform):
    """HU window to [0, 1] and Gaussian denoising, with optional deblurring, equalisation and edges.

    Steps on a ``[1, X, Y, Z]`` patch (sizes in mm use the patch's voxel size):
    1. clip ``hu_window`` and scale to [0, 1] (``ScaleIntensityRange``);
    2. Gaussian blur with ``denoise_sigma_mm`` (0 disables);
    3. ``deblur``: ``None``, ``"unsharp"`` (``x + amount * (x - blur(x))``) or ``"richardson_lucy"``
       (``rl_iterations`` multiplicative updates with a Gaussian PSF of ``deblur_sigma_mm``);
    4. ``equalize``: histogram equalisation within the window (``HistogramNormalize``);
    5. ``edge_channel``: append the gradient magnitude (``SobelGradients``) as a second channel.

    Output: float32 in [0, 1], 1 channel (2 with ``edge_channel``).
    """

    def __init__(
        self,
        hu_window: Sequence[float] = (-1000.0, 400.0),
        denoise_sigma_mm: float = 0.5,
        deblur: str | None = None,
        deblur_sigma_mm: float = 1.0,
        unsharp_amount: float = 1.0,
        rl_iterations: int = 5,
        equalize: bool = False,
        edge_channel: bool = False,
    ):
        if deblur not in (None, "unsharp", "richardson_lucy"):
            raise ValueError(f"deblur must be None, 'unsharp' or 'richardson_lucy', got {deblur!r}")
        self.window = ScaleIntensityRange(hu_window[0], hu_window[1], 0.0, 1.0, clip=True, dtype=torch.float32)
        self.denoise_sigma_mm, self.deblur, self.deblur_sigma_mm = denoise_sigma_mm, deblur, deblur_sigma_mm
        self.unsharp_amount, self.rl_iterations = unsharp_amount, rl_iterations
        self.equalize = HistogramNormalize(num_bins=256, min=0, max=1) if equalize else None
        self.edges = SobelGradients() if edge_channel else None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        voxel_mm = voxel_size(img.affine) if isinstance(img, MetaTensor) else np.ones(3)

        def blur(x: torch.Tensor, sigma_mm: float) -> torch.Tensor:
            return gaussian_blur(x, (sigma_mm / voxel_mm).tolist())

        x = self.window(img)
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        if self.denoise_sigma_mm > 0:
            x = blur(x, self.denoise_sigma_mm)
        if self.deblur == "unsharp":
            x = (x + self.unsharp_amount * (x - blur(x, self.deblur_sigma_mm))).clamp(0.0, 1.0)
        elif self.deblur == "richardson_lucy":  # a symmetric Gaussian PSF is its own adjoint
            estimate = x.clone()
            for _ in range(self.rl_iterations):
                estimate = estimate * blur(x / blur(estimate, self.deblur_sigma_mm).clamp_min(1e-4), self.deblur_sigma_mm)
            x = estimate.clamp(0.0, 1.0)
        if self.equalize is not None:
            x = self.equalize(x)
        if self.edges is not None:
            magnitude = torch.linalg.vector_norm(torch.as_tensor(self.edges(x)), dim=0, keepdim=True)
            x = torch.cat([x, magnitude.clamp(0.0, 1.0).to(x)], dim=0)
        return MetaTensor(x, meta=img.meta, applied_operations=img.applied_operations) if isinstance(img, MetaTensor) else x


class CTPreprocessd(MapTransform):
    """Dictionary twin of :class:`CTPreprocess`; arguments after ``keys`` are passed through."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs):
        super().__init__(keys, allow_missing_keys)
        self.preprocess = CTPreprocess(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.preprocess(d[key])
        return d
