"""Measuring every nodule of a scan item as a MONAI transform (:class:`NoduleMeasured`, on
:mod:`nodule_bundle.measuring.measure`), and the nodules' masks as one label map on the scan's grid."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Spacing, SpatialCrop, SpatialResample
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import SpaceKeys

from nodule_bundle.core.geometry import voxel_size, world_to_voxel
from nodule_bundle.core.threads import on_threads
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
from nodule_bundle.preprocessing.transforms import NoduleCrop

if TYPE_CHECKING:
    from nodule_bundle.network.segmentation import NoduleSegmenter

LEARNED_MASK_REACH = 0.01  # where the segmentation network gives less, a voxel is not the nodule's, however dense (chosen on validation)
#: the learned mask's edge grows this many voxels into dense tissue the network does not rule out: it
#: outlines large nodules' lobes and tails short (they reach 0.05-0.3; chosen on the real-geometry
#: validation split with the reach above, among 1-6 voxels and reaches 0-0.1: long axis MAE 1.11 -> 1.07 mm)
LEARNED_EDGE_GROWTH_VOXELS = 2
#: the widest ball whose opening drops vessels from the learned mask (it measures the nodules of 10 mm
#: and more, whose lobules a 3 mm ball cut off; chosen on the whole real-geometry set's validation split)
LEARNED_STRAND_BALL_MAX_MM = 2.0


class NoduleMeasured(MapTransform):
    """Segment and measure every nodule of a scan item (:mod:`nodule_bundle.measuring.measure`).

    For each centre in ``data[center_key]`` (``(N, 3)`` LPS world mm) a fine isotropic HU crop
    (``patch_size`` voxels of ``spacing_mm``; ``large_patch_size`` for a nodule that reaches the
    border of the first or runs on out of it, 67 mm by default, for nodules up to about 50 mm) is cut
    from ``data[key]`` and measured on the scan's own voxels; the item gains
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
        reaches the crop's border or a lobe of it runs on out of it: ``cut_short``), measured on the
        scan's own voxels under it (the mask resampled nearest onto them, its edge decided by those
        voxels: :func:`~nodule_bundle.measuring.measure.edge_on_acquired_grid`).
        With a ``segmenter``, the nodule is measured on the learned mask instead (:meth:`_learned`)
        when the network outlines it at least the segmenter's ``min_long_axis_mm`` long: below, the
        threshold's segmentation measures better."""
        for cropper in (self.cropper, self.large_cropper):
            crop = cropper(image, center)
            hu = crop[0].numpy()
            segmentation = segment_nodule(hu, self.spacing_mm, self.hold_margin_mm, larger_crop=cropper is self.cropper)
            mask = segmentation.mask
            if not (touches_border(mask) or segmentation.cut_short):
                break
        learned = self._learned(image, center, segmentation.threshold) if self.segmenter is not None else None
        if learned is not None:
            (measured, acquired, source), by = learned, "learned"
        else:
            source = cropper.source_box(image, center)
            # what was cut off matters only beside the region: both carried over the region's box alone
            fine = MetaTensor(torch.from_numpy(np.stack([mask, segmentation.attached]).astype(np.float32)), affine=crop.affine)
            region, attached = nearest_over_mask(self.to_source, fine, source.affine, source.shape[1:])
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
        return nearest_over_mask(self.to_source, on_source, crop.affine, crop.shape[1:])[0]

    def _learned(self, image: MetaTensor, center: np.ndarray, fallback_threshold: float) -> tuple[NoduleMeasurement, np.ndarray, MetaTensor] | None:
        """The learned mask's measurement, the mask on the scan's own voxels and the part of the scan they
        are (its ``source_box``); ``None`` if it finds nothing or less than the segmenter's
        ``min_long_axis_mm`` long. The network's mask (its probability resampled
        linearly onto those voxels, above 0.5, the part nearest the centre, without the vessels it runs
        into: :meth:`_strands`) chooses the nodule's voxels; their edge is decided on the voxels' own values
        (:func:`~nodule_bundle.measuring.measure.edge_on_acquired_grid` at :func:`~nodule_bundle.measuring.measure.rim_threshold`,
        or at ``fallback_threshold``, the threshold segmentation's, where the mask's rim is lung) up to
        :data:`LEARNED_EDGE_GROWTH_VOXELS` voxels out, where the network gives at least :data:`LEARNED_MASK_REACH`."""
        probability, cropper = self.segmenter.probability(image, center)  # type: ignore[union-attr]
        source = cropper.source_box(image, center)
        space = image.meta.get("space", SpaceKeys.RAS)
        strands = self._strands(probability, center, space, source)
        on_source = self.interpolate(probability, dst_affine=source.affine, spatial_size=source.shape[1:])[0].numpy()
        voxel = world_to_voxel(center, source.affine, space)
        chosen = component_nearest((on_source > 0.5) & ~strands, voxel)
        hu, affine = source[0].numpy(), np.asarray(source.affine)
        if not chosen.any() or measure_on_acquired_grid(chosen, hu, affine).long_axis_mm < self.segmenter.min_long_axis_mm:  # type: ignore[union-attr]
            return None
        threshold = rim_threshold(chosen, hu, voxel_size(source.affine))
        if math.isnan(threshold):
            threshold = fallback_threshold
        attached = (on_source < LEARNED_MASK_REACH) | strands
        acquired = chosen if math.isnan(threshold) else edge_on_acquired_grid(chosen, hu, threshold, attached, LEARNED_EDGE_GROWTH_VOXELS)
        return measure_on_acquired_grid(acquired, hu, affine), acquired, source

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
        dropped = region & ~without_strands(region, index, thickness, self.spacing_mm, LEARNED_STRAND_BALL_MAX_MM)
        on_fine = MetaTensor(torch.from_numpy(dropped[None].astype(np.float32)), affine=fine.affine)
        return nearest_over_mask(self.to_source, on_fine, source.affine, source.shape[1:])[0]


def reached_box(mask: np.ndarray, affine, dst_affine, dst_shape: Sequence[int]) -> tuple[slice, ...] | None:
    """The box of the grid of ``dst_affine`` and ``dst_shape`` that lies within half a voxel (one more
    voxel of margin) of ``mask``'s true voxels on its own grid of ``affine``: outside it, nearest sampling
    of ``mask`` finds none of them. ``None`` where ``mask`` is empty or the box misses the grid."""
    inside = np.argwhere(mask)
    if not len(inside):
        return None
    low, high = inside.min(0) - 0.5, inside.max(0) + 0.5
    corners = np.array([[i, j, k, 1.0] for i in (low[0], high[0]) for j in (low[1], high[1]) for k in (low[2], high[2])])
    voxels = (np.linalg.inv(np.asarray(dst_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64) @ corners.T)[:3].T
    shape = np.asarray(dst_shape, dtype=int)
    start = np.clip(np.floor(voxels.min(0)) - 1, 0, shape).astype(int)
    end = np.clip(np.ceil(voxels.max(0)) + 2, 0, shape).astype(int)
    return None if np.any(end <= start) else tuple(slice(a, b) for a, b in zip(start, end))


def nearest_over_mask(resample: SpatialResample, image: MetaTensor, dst_affine, dst_shape: Sequence[int]) -> np.ndarray:
    """``image`` (``[C, ...]`` 0/1 with its affine) resampled by ``resample`` (nearest) onto the grid of
    ``dst_affine`` and ``dst_shape``, above 0.5: ``[C, *dst_shape]`` bool. Sampled only over the box
    that channel 0's voxels reach (:func:`reached_box`), false elsewhere: the same as over the whole
    grid for channel 0 (a point exactly halfway between two voxels goes to either, as float rounding
    falls), the others kept beside it only."""
    out = np.zeros((image.shape[0], *dst_shape), dtype=bool)
    box = reached_box(image[0].numpy() > 0.5, image.affine, dst_affine, dst_shape)
    if box is not None:
        out[(slice(None), *box)] = _resampled_on_box(resample, image, dst_affine, box) > 0.5
    return out


def _resampled_on_box(resample: SpatialResample, image: MetaTensor, dst_affine, box: tuple[slice, ...]) -> np.ndarray:
    """``image`` resampled by ``resample`` onto the part ``box`` of the grid of ``dst_affine``: ``[C, *box's sizes]``."""
    dst_affine = torch.as_tensor(np.asarray(dst_affine, dtype=np.float64))
    corner = dst_affine.clone()
    corner[:3, 3] = (dst_affine @ torch.tensor([*(b.start for b in box), 1.0], dtype=torch.float64))[:3]
    return resample(image, dst_affine=corner, spatial_size=tuple(b.stop - b.start for b in box)).numpy()


def label_map(crops: Sequence[MetaTensor], spatial_shape: Sequence[int], affine, space=SpaceKeys.RAS) -> MetaTensor:
    """The nodule masks of ``crops`` (channel 1 of :class:`NoduleMeasured`'s crops, each with its own
    affine) resampled (nearest) onto a scan grid of ``spatial_shape`` and ``affine``: ``[1, X, Y, Z]``
    uint8, nodule ``i`` labelled ``i + 1``, a later nodule winning overlaps. Stored slice by slice
    (``[Z, Y, X]`` in memory, NIfTI's own layout), so writing it to a file is a plain copy."""
    affine = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    label = torch.zeros(tuple(spatial_shape)[::-1], dtype=torch.uint8).permute(2, 1, 0)
    to_scan = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
    for value, crop in enumerate(crops, start=1):
        mask = MetaTensor(crop.as_tensor()[1:2].float(), affine=crop.affine)
        region = reached_box(mask[0].numpy() > 0, crop.affine, affine, spatial_shape)  # only the scan box around the mask is resampled
        if region is None:
            continue
        label[region][torch.from_numpy(_resampled_on_box(to_scan, mask, affine, region)[0] > 0.5)] = value
    return MetaTensor(label[None], affine=affine, meta={"space": space})
