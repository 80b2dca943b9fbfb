"""Custom MONAI transforms: physical nodule crop, CT preprocessing, training targets, named heads.

Array transforms take channel-first ``MetaTensor`` images; each has a dictionary twin (``...d``).
All geometry goes through :mod:`nodule_bundle.core.geometry`.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    HistogramNormalize,
    LoadImaged,
    MapTransform,
    Resize,
    ScaleIntensityRange,
    SobelGradients,
    Spacing,
    SpatialCrop,
    SpatialResample,
    Transform,
)
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import SpaceKeys

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.geometry import LPS_TO_RAS, lps_to_ras, world_to_voxel
from nodule_bundle.core.nodule import RATING_COLUMNS, size_band
from nodule_bundle.measuring.measure import (
    HOLD_MARGIN_MM,
    MEASUREMENT_KEYS,
    NoduleMeasurement,
    component_nearest,
    depth_inside_mm,
    edge_on_acquired_grid,
    measure_mask,
    measure_on_acquired_grid,
    rim_threshold,
    segment_nodule,
    touches_border,
    without_strands,
)  # fmt: skip
from nodule_bundle.network.networks import DIAMETER, MALIGNANCY, NODULE, RATINGS, SIZE_BAND
from nodule_bundle.preprocessing.filters import gaussian_blur
from nodule_bundle.reading.readers import DicomSeriesReader, NiftiReader

if TYPE_CHECKING:
    from nodule_bundle.network.segmentation import NoduleSegmenter


class NoduleOutsideVolumeError(NoduleBundleError):
    """A nodule centre that does not lie inside the image it is said to be in."""


class UnreadableImageError(NoduleBundleError):
    """A file that MONAI's readers cannot read as a 3D image."""


def _filename(img: torch.Tensor) -> str:
    return str(img.meta.get("filename_or_obj", "<image>")) if isinstance(img, MetaTensor) else "<image>"


def _voxel_size(affine: torch.Tensor | np.ndarray) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    return np.linalg.norm(aff[:3, :3], axis=0)


MAX_AIR_HU = -500.0  # every chest CT holds air (lungs, outside the body) far below this
LEARNED_MASK_REACH = 0.1  # where the segmentation network gives less, a voxel is not the nodule's, however dense (chosen on validation)
MAX_IMAGE_BYTES = 16 * 2**30  # as float32: a 1024 x 1024 x 4000 scan; a header claiming more is refused unread


def declared_shape(path: str) -> tuple[int, ...] | None:
    """The image size a file's header claims, read without the voxels (NIfTI by nibabel, MHD, NRRD
    and other ITK formats by ITK's ImageIO); ``None`` for a DICOM folder or a header not understood
    (the reader then reports it)."""
    import itk
    import nibabel as nib

    if os.path.isdir(path) or not os.path.isfile(path):
        return None
    try:
        if path.endswith((".nii", ".nii.gz")):
            return tuple(int(v) for v in nib.load(path).header.get_data_shape())
        io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            return None
        io.SetFileName(path)
        io.ReadImageInformation()
        return tuple(int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions()))
    except Exception:  # noqa: BLE001 - an unreadable header is the reader's to report
        return None


def check_declared_size(path: str) -> None:
    """Refuse, before reading, an image whose header claims more than :data:`MAX_IMAGE_BYTES`."""
    shape = declared_shape(path)
    if shape and math.prod(shape) * 4 > MAX_IMAGE_BYTES:
        raise UnreadableImageError(
            f"{path}: the header claims a {' x '.join(map(str, shape))} image ({math.prod(shape) * 4 / 1e9:,.0f} GB as float32), "
            f"more than the {MAX_IMAGE_BYTES / 2**30:.0f} GB this reader allows: a damaged or hostile header; not read"
        )


class LoadCTImaged(LoadImaged):
    """MONAI's ``LoadImaged`` (same arguments) for CT as it arrives: DICOM directories through
    :class:`~nodule_bundle.reading.readers.DicomSeriesReader` (series chosen, slices ordered by position and
    checked), NIfTI files through :class:`~nodule_bundle.reading.readers.NiftiReader` (MONAI's nibabel reader,
    a faster layout copy), MHD/raw and NRRD through MONAI's readers. A ``reader`` given explicitly is
    used for everything.

    Unreadable files, headers claiming more than :data:`MAX_IMAGE_BYTES` (checked before reading),
    images that are not one 3D volume and images that are not CT in Hounsfield units (NaN/infinite
    voxels; nothing as dark as air, below :data:`MAX_AIR_HU`: an MR, or data without its rescale) raise
    :class:`UnreadableImageError` naming the file, instead of a reader traceback or a silent misread.

    Args:
        series_uid: the DICOM series to read when a directory holds several (default: the CT
            series with the most slices).
    """

    def __init__(self, keys: KeysCollection, *args, series_uid: str | None = None, **kwargs):
        super().__init__(keys, *args, **kwargs)
        dtype = kwargs.get("dtype", np.float32)
        self.dicom_reader = DicomSeriesReader(series_uid=series_uid, dtype=dtype)
        reader_kwargs = {k: v for k, v in kwargs.items() if k not in inspect.signature(LoadImaged.__init__).parameters}  # as LoadImage passes them
        self.nifti_reader = NiftiReader(dtype=dtype, **reader_kwargs)

    def __call__(self, data, reader=None):
        paths = [str(data[k]) for k in self.key_iterator(dict(data))]
        for path in paths:
            check_declared_size(path)
        if reader is None and self._loader.auto_select:
            if all(os.path.isdir(p) for p in paths):
                reader = self.dicom_reader
            elif all(p.lower().endswith((".nii", ".nii.gz")) for p in paths):
                reader = self.nifti_reader
        try:
            d = super().__call__(data, reader)
        except NoduleBundleError:
            raise
        except Exception as err:
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise UnreadableImageError(f"{', '.join(paths)}: cannot read image ({reason})") from err
        for key in self.key_iterator(d):
            if d[key].ndim != 4 or d[key].shape[0] != 1:
                raise UnreadableImageError(f"{data[key]}: expected one 3D volume, got image shape {tuple(d[key].shape)} (channel first)")
            darkest, brightest = (float(v) for v in torch.aminmax(d[key].as_tensor()))  # one pass; NaN and Inf propagate
            if not (math.isfinite(darkest) and math.isfinite(brightest)):
                raise UnreadableImageError(f"{data[key]}: NaN or infinite voxel values")
            if darkest > MAX_AIR_HU:
                raise UnreadableImageError(
                    f"{data[key]}: not a CT in Hounsfield units: darkest voxel {darkest:.0f}, but air is about -1000 HU "
                    "(an MR image, or stored values without their rescale slope/intercept?)"
                )
        return d


class NoduleCrop(Transform):
    """Cut an isotropic cube centred on a world point: crop first, then resample only the crop.

    Input: ``[C, X, Y, Z]`` MetaTensor with its voxel->world affine (frame in ``meta["space"]``).
    Output: ``[C, n, n, n]`` with ``n = patch_size``, voxel size ``spacing_mm``, axes along the RAS
    world axes, and the world point at the patch centre (voxel ``(n - 1) / 2``). Regions beyond the
    scan repeat its border (air at the edge of a CT field of view).

    Args:
        patch_size: voxels per side.
        spacing_mm: isotropic output voxel size in mm.
        mode: interpolation for :class:`monai.transforms.SpatialResample`.
    """

    def __init__(self, patch_size: int = 48, spacing_mm: float = 1.0, mode: str = "bilinear"):
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


def on_threads(function: Callable, items: Sequence, workers: int | None = None) -> list:
    """``[function(item) for item in items]``, side by side on ``workers`` threads (``None``: one per CPU
    core; one item or one worker: on this thread). For per-nodule work in torch and scipy, which
    release the GIL."""
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


class NoduleMeasured(MapTransform):
    """Segment and measure every nodule of a scan item (:mod:`nodule_bundle.measuring.measure`).

    For each centre in ``data[center_key]`` (``(N, 3)`` LPS world mm) a fine isotropic HU crop
    (``patch_size`` voxels of ``spacing_mm``; ``large_patch_size`` for a nodule that reaches the
    border of the first, 67 mm by default, for nodules up to about 50 mm) is cut from ``data[key]``
    and measured on the scan's own voxels; the item gains
    length-N lists ``measured_long_axis_mm``, ``measured_short_axis_mm``, ``measured_mean_diameter_mm``,
    ``measured_volume_mm3`` and ``measured_solid_mean_diameter_mm``, which :class:`NoduleCropd` hands
    to each nodule's sample (``per_nodule_keys``). Run it before the crop, on the whole scan.
    With ``crop_key``, the item also keeps each nodule's crop and mask: a length-N list of
    ``[2, n, n, n]`` int16 MetaTensors (HU, mask 0/1) with the crop's affine, for the report's pictures
    and label map (:func:`label_map`); a large crop is kept resampled (nearest) to ``patch_size``, its
    voxels coarser (1.05 mm by default), so that every nodule's crop has one size. With ``label_key``, it gains the masks as a label map on the
    scan's own grid (``[1, X, Y, Z]`` uint8 MetaTensor, nodule ``i`` labelled ``i + 1``).
    Nodules are measured side by side on ``workers`` threads (``None``: one per CPU core); the crop
    (torch) and the segmentation (scipy) release the GIL, so 2 cores measure 20 nodules 1.7x faster.
    ``hold_margin_mm``: the threshold segmentation's (:func:`~nodule_bundle.measuring.measure.segment_nodule`);
    ``inference.json`` sets 0 where a ``segmenter`` measures the larger nodules, leaving the threshold's
    mask the small ones, whose touching vessels the wider hold lets in.
    """

    def __init__(
        self, keys: KeysCollection, center_key: str = "center_world_mm", patch_size: int = 64, spacing_mm: float = 0.6,
        label_key: str | None = None, crop_key: str | None = None, workers: int | None = None, large_patch_size: int = 112,
        segmenter: NoduleSegmenter | None = None, hold_margin_mm: float = HOLD_MARGIN_MM,
    ):  # fmt: skip
        super().__init__(keys)
        self.center_key, self.spacing_mm, self.label_key, self.crop_key = center_key, float(spacing_mm), label_key, crop_key
        self.hold_margin_mm = float(hold_margin_mm)
        self.cropper = NoduleCrop(patch_size, spacing_mm)
        self.large_cropper = NoduleCrop(large_patch_size, spacing_mm)
        self.to_source = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
        self.interpolate = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
        self.to_fine = Spacing(pixdim=spacing_mm, mode="bilinear")
        self.to_crop_size = Resize((patch_size,) * 3, mode="nearest")
        self.workers, self.segmenter = workers, segmenter

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.first_key(d)]
        centers = np.asarray(d[self.center_key], dtype=np.float64).reshape(-1, 3)
        results = on_threads(lambda center: self._measure(image, center), centers, self.workers)
        found, crops = [m for m, _, _ in results], [c for _, c, _ in results]
        for key in MEASUREMENT_KEYS:
            d[key] = [m[key] for m in found]
        d["measured_by"] = [by for _, _, by in results]
        if self.crop_key:
            d[self.crop_key] = crops
        if self.label_key:
            d[self.label_key] = label_map(crops, image.shape[1:], image.affine, image.meta.get("space", SpaceKeys.RAS))
        return d

    def _measure(self, image: MetaTensor, center: np.ndarray) -> tuple[dict, MetaTensor, str]:
        """One nodule's measurements, its ``[2, n, n, n]`` crop (HU, mask) and what outlined it
        (``"threshold"`` or ``"learned"``): segmented on the fine crop (the large one when the mask
        reaches the crop's border), measured on the scan's own voxels under it (the mask resampled
        nearest onto them, its edge decided by those voxels: :func:`~nodule_bundle.measuring.measure.edge_on_acquired_grid`).
        With a ``segmenter``, the nodule is measured on the learned mask instead (:meth:`_learned`)
        when that mask is at least the segmenter's ``min_long_axis_mm`` long: below, the threshold's
        segmentation measures better."""
        for cropper in (self.cropper, self.large_cropper):
            crop = cropper(image, center)
            hu = crop[0].numpy()
            segmentation = segment_nodule(hu, self.spacing_mm, self.hold_margin_mm)
            mask = segmentation.mask
            if not touches_border(mask):
                break
        learned = self._learned(image, center, segmentation.threshold) if self.segmenter is not None else None
        if learned is not None and learned[0].long_axis_mm >= self.segmenter.min_long_axis_mm:  # type: ignore[union-attr]
            (measured, acquired, source), by = learned, "learned"
        else:
            source = cropper.source_box(image, center)
            fine = MetaTensor(torch.from_numpy(np.stack([mask, segmentation.attached]).astype(np.float32)), affine=crop.affine)
            region, attached = self.to_source(fine, dst_affine=source.affine, spatial_size=source.shape[1:]).numpy() > 0.5
            acquired = edge_on_acquired_grid(region, source[0].numpy(), segmentation.threshold, attached)
            if acquired.any():
                measured = measure_on_acquired_grid(acquired, source[0].numpy(), np.asarray(source.affine))
            else:  # smaller than one acquired voxel: measured on the fine crop
                measured = measure_mask(mask, hu, self.spacing_mm)
            by = "threshold"
        if acquired.any():  # the pictures and the label map show the voxels that were measured
            mask = self._on_crop(acquired, source, crop)
            if touches_border(mask) and cropper is self.cropper:
                cropper, crop = self.large_cropper, self.large_cropper(image, center)
                hu, mask = crop[0].numpy(), self._on_crop(acquired, source, crop)
        both = torch.stack([torch.from_numpy(np.rint(hu).astype(np.int16)), torch.from_numpy(mask.astype(np.int16))])
        kept = MetaTensor(both, affine=crop.affine, meta={"space": image.meta.get("space", SpaceKeys.RAS)})
        if cropper is self.large_cropper:  # the pictures' and label map's crops share one size, so that a scan's samples collate
            kept = self.to_crop_size(kept.float()).round().to(torch.int16)
        return measured.as_dict(), kept, by

    def _on_crop(self, acquired: np.ndarray, source: MetaTensor, crop: MetaTensor) -> np.ndarray:
        """A mask on the scan's voxels of ``source`` carried (nearest) onto ``crop``'s grid."""
        on_source = MetaTensor(torch.from_numpy(acquired[None].astype(np.float32)), affine=source.affine)
        return self.to_source(on_source, dst_affine=crop.affine, spatial_size=crop.shape[1:])[0].numpy() > 0.5

    def _learned(self, image: MetaTensor, center: np.ndarray, fallback_threshold: float) -> tuple[NoduleMeasurement, np.ndarray, MetaTensor] | None:
        """The learned mask's measurement, the mask on the scan's own voxels and the part of the scan they
        are (its ``source_box``); ``None`` if it finds nothing. The network's mask (its probability resampled
        linearly onto those voxels, above 0.5, the part nearest the centre, without the vessels it runs
        into: :meth:`_strands`) chooses the nodule's voxels; their edge is decided on the voxels' own values
        (:func:`~nodule_bundle.measuring.measure.edge_on_acquired_grid` at :func:`~nodule_bundle.measuring.measure.rim_threshold`,
        or at ``fallback_threshold``, the threshold segmentation's, where the mask's rim is lung) where the
        network gives at least :data:`LEARNED_MASK_REACH`."""
        probability, cropper = self.segmenter.probability(image, center)  # type: ignore[union-attr]
        source = cropper.source_box(image, center)
        space = image.meta.get("space", SpaceKeys.RAS)
        strands = self._strands(probability, center, space, source)
        on_source = self.interpolate(probability, dst_affine=source.affine, spatial_size=source.shape[1:])[0].numpy()
        voxel = world_to_voxel(center, source.affine, space)
        chosen = component_nearest((on_source > 0.5) & ~strands, voxel)
        if not chosen.any():
            return None
        hu = source[0].numpy()
        threshold = rim_threshold(chosen, hu, _voxel_size(source.affine))
        if math.isnan(threshold):
            threshold = fallback_threshold
        attached = (on_source < LEARNED_MASK_REACH) | strands
        acquired = chosen if math.isnan(threshold) else edge_on_acquired_grid(chosen, hu, threshold, attached)
        return measure_on_acquired_grid(acquired, hu, np.asarray(source.affine)), acquired, source

    def _strands(self, probability: MetaTensor, center: np.ndarray, space: str, source: MetaTensor) -> np.ndarray:
        """The vessels and strands the network's mask (above 0.5, the part nearest ``center``) runs into, on
        ``source``'s voxels: what :func:`~nodule_bundle.measuring.measure.without_strands` drops from it on the
        threshold segmentation's isotropic voxels, the nodule's thickness taken at ``center``. The network
        follows a vessel as far as the nodule's own density goes (on the real-geometry validation split,
        removing them: long axis MAE 0.92 -> 0.83 mm; phantom 1.08 -> 0.99 mm)."""
        outline = component_nearest(probability[0].numpy() > 0.5, world_to_voxel(center, probability.affine, space))
        if not outline.any():
            return np.zeros(source.shape[1:], dtype=bool)
        start, end = generate_spatial_bounding_box(outline[None], margin=2)
        fine = self.to_fine(SpatialCrop(roi_start=start, roi_end=end)(probability))  # the outline's box only: 4-40x fewer voxels
        voxel = world_to_voxel(center, fine.affine, space)
        region = component_nearest(fine[0].numpy() > 0.5, voxel)
        index = tuple(int(i) for i in np.clip(np.rint(voxel), 0, np.array(region.shape) - 1))
        if not region[index]:
            return np.zeros(source.shape[1:], dtype=bool)
        thickness = float(depth_inside_mm(region, (self.spacing_mm,) * 3)[index])
        dropped = region & ~without_strands(region, index, thickness, self.spacing_mm)
        on_fine = MetaTensor(torch.from_numpy(dropped[None].astype(np.float32)), affine=fine.affine)
        return self.to_source(on_fine, dst_affine=source.affine, spatial_size=source.shape[1:])[0].numpy() > 0.5



def label_map(crops: Sequence[MetaTensor], spatial_shape: Sequence[int], affine, space=SpaceKeys.RAS) -> MetaTensor:
    """The nodule masks of ``crops`` (channel 1 of :class:`NoduleMeasured`'s crops, each with its own
    affine) resampled (nearest) onto a scan grid of ``spatial_shape`` and ``affine``: ``[1, X, Y, Z]``
    uint8, nodule ``i`` labelled ``i + 1``, a later nodule winning overlaps. Stored slice by slice
    (``[Z, Y, X]`` in memory, NIfTI's own layout), so writing it to a file is a plain copy."""
    affine = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    shape = np.asarray(spatial_shape, dtype=int)
    label = torch.zeros(tuple(shape[::-1]), dtype=torch.uint8).permute(2, 1, 0)
    to_scan = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
    inverse = torch.linalg.inv(affine)
    for value, crop in enumerate(crops, start=1):
        mask = MetaTensor(crop.as_tensor()[1:2].float(), affine=crop.affine)
        inside = torch.nonzero(mask[0]).numpy()
        if not len(inside):
            continue
        low, high = inside.min(0), inside.max(0)  # only the scan box around the mask is resampled
        corners = np.array([[i, j, k, 1.0] for i in (low[0], high[0]) for j in (low[1], high[1]) for k in (low[2], high[2])])
        voxels = (inverse.numpy() @ np.asarray(crop.affine, dtype=np.float64) @ corners.T)[:3].T
        start = np.clip(np.floor(voxels.min(0)) - 1, 0, shape).astype(int)
        end = np.clip(np.ceil(voxels.max(0)) + 2, 0, shape).astype(int)
        if np.any(end <= start):
            continue
        box = affine.clone()
        box[:3, 3] = (affine @ torch.tensor([*start, 1.0], dtype=torch.float64))[:3]
        back = to_scan(mask, dst_affine=box, spatial_size=tuple(end - start))[0] > 0.5
        region = tuple(slice(a, b) for a, b in zip(start, end))
        label[region][back] = value
    return MetaTensor(label[None], affine=affine, meta={"space": space})


class NoduleCropd(MapTransform):
    """Dictionary twin of :class:`NoduleCrop`: one sample per nodule, as MONAI's multi-sample crops.

    ``data[center_key]`` is one centre ``(3,)`` or several ``(N, 3)`` in LPS world mm. Returns a list of
    N dicts: ``keys`` cropped around each centre, ``center_key`` set to that centre, ``center_voxel``
    its continuous voxel index in the source image, and each key of ``per_nodule_keys`` (present in
    ``data`` as length-N sequences, e.g. ``nodule_id``) indexed; every other key is shared. The
    nodules are cropped side by side on ``workers`` threads (:func:`on_threads`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        center_key: str = "center_world_mm",
        per_nodule_keys: Sequence[str] = ("nodule_id",),
        patch_size: int = 48,
        spacing_mm: float = 1.0,
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
        voxel_mm = _voxel_size(img.affine) if isinstance(img, MetaTensor) else np.ones(3)

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


class NoduleTargetsd(MapTransform):
    """Build the training target ``label = [malignancy, size band, diameter mm, is-nodule, ratings...]``
    (float32, ``[4 + 7]``; the ratings are the item's :data:`~nodule_bundle.core.nodule.RATING_COLUMNS`).

    Unknown values (``None``, a missing key, NaN ratings) become -1 (classes) or NaN (diameter,
    ratings), which the loss masks. The size band is derived from the diameter (Lung-RADS edges 6,
    8, 15 mm). An item without an ``is_nodule`` key is an annotated nodule (1); detector candidates
    that are not nodules carry ``is_nodule: 0``. The source keys are rewritten with the same
    sentinels (every rating key set), and other unknown fields (``texture: None``) with ``""``, so that
    batches collate.
    """

    def __init__(
        self, malignancy_key: str = "malignancy", diameter_key: str = "diameter_mm", label_key: str = "label", nodule_key: str = "is_nodule"
    ):
        super().__init__([malignancy_key, diameter_key], allow_missing_keys=True)
        self.malignancy_key, self.diameter_key, self.label_key, self.nodule_key = malignancy_key, diameter_key, label_key, nodule_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        malignancy = d.get(self.malignancy_key)
        diameter = d.get(self.diameter_key)
        is_nodule = d.get(self.nodule_key, 1)
        malignancy = -1 if malignancy is None else int(malignancy)
        diameter = math.nan if diameter is None else float(diameter)
        is_nodule = -1 if is_nodule is None else int(is_nodule)
        ratings = [math.nan if d.get(name) is None else float(d[name]) for name in RATING_COLUMNS]
        band = size_band(diameter) if math.isfinite(diameter) else -1
        d = {k: "" if v is None else v for k, v in d.items()}
        d[self.malignancy_key], d[self.diameter_key], d[self.nodule_key] = malignancy, diameter, is_nodule
        d.update(zip(RATING_COLUMNS, ratings))  # every item has every rating key: a phantom's and LIDC's items collate
        d[self.label_key] = torch.tensor([malignancy, band, diameter, is_nodule, *ratings], dtype=torch.float32)
        return d


class NoduleHeadsd(MapTransform):
    """Name the network's output channels (post-transform on one decollated item).

    From ``pred`` (``[16]`` logits/mm/ratings, or ``[passes, 16]`` from a test-time-augmenting inferer with
    ``keep_passes``, averaged here) it adds ``malignancy_probs`` ``[2]``, ``malignancy_prob`` ``[1]``
    (P(malignant), its logits divided by ``malignancy_temperature``: temperature scaling, see
    :func:`~nodule_bundle.evaluation.calibration.fit_temperature`), ``malignancy_prob_uncalibrated`` ``[1]`` and
    the ``malignancy_logits`` ``[2]`` it comes from,
    ``size_band_probs`` ``[4]``, ``size_band`` (int), ``diameter_mm_pred`` ``[1]``, ``nodule_probs``
    ``[2]``, ``nodule_prob`` ``[1]`` (P(a nodule, not a vessel or wall)), ``ratings_pred`` ``[7]`` (the
    readers' semantic ratings, :data:`~nodule_bundle.core.nodule.RATING_COLUMNS` order); with passes also
    ``malignancy_prob_spread`` ``[1]``: the standard deviation of P(malignant) over the passes, the
    network's uncertainty. From ``label`` when present: ``malignancy_true``, ``size_band_true``,
    ``nodule_true`` (0-d long), ``diameter_mm_true`` ``[1]``, ``ratings_true`` ``[7]`` (NaN unknown).
    """

    def __init__(self, pred_key: str = "pred", label_key: str = "label", malignancy_temperature: float = 1.0):
        super().__init__([pred_key], allow_missing_keys=False)
        if not malignancy_temperature > 0:
            raise ValueError(f"malignancy_temperature must be positive, got {malignancy_temperature}")
        self.pred_key, self.label_key, self.temperature = pred_key, label_key, float(malignancy_temperature)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        pred = torch.as_tensor(d[self.pred_key]).float()
        if pred.ndim == 2:  # one row per test-time pass
            per_pass = torch.softmax(pred[:, MALIGNANCY] / self.temperature, dim=1)[:, 1]
            d["malignancy_prob_spread"] = per_pass.std(unbiased=False).reshape(1)
            pred = pred.mean(0)
        d["malignancy_logits"] = pred[MALIGNANCY]
        probs = torch.softmax(pred[MALIGNANCY] / self.temperature, dim=0)
        d["malignancy_probs"], d["malignancy_prob"] = probs, probs[1:]
        d["malignancy_prob_uncalibrated"] = torch.softmax(pred[MALIGNANCY], dim=0)[1:]
        d["size_band_probs"] = torch.softmax(pred[SIZE_BAND], dim=0)
        d["size_band"] = int(d["size_band_probs"].argmax())
        d["diameter_mm_pred"] = pred[DIAMETER]
        nodule = torch.softmax(pred[NODULE], dim=0)
        d["nodule_probs"], d["nodule_prob"] = nodule, nodule[1:]
        d["ratings_pred"] = pred[RATINGS]
        label = d.get(self.label_key)
        if label is not None:
            label = torch.as_tensor(label).float()
            d["malignancy_true"], d["size_band_true"] = label[0].long(), label[1].long()
            d["diameter_mm_true"] = label[2:3]
            d["nodule_true"] = label[3].long()
            d["ratings_true"] = label[4:]
        return d
