"""Learned nodule masks: a MONAI UNet that outlines the nodule at the centre of a crop.

The threshold segmentation of :mod:`nodule_bundle.measuring.measure` holds a region within a few thicknesses of
its centre and opens it, which cuts the lobes off large irregular nodules; a network trained on
reference masks (the real-geometry outlines and the phantom's bodies, ``configs/train_segmentation.json``)
follows them. :class:`~nodule_bundle.measuring.transforms.NoduleMeasured` measures a nodule on it when the network's
outline is at least ``min_long_axis_mm`` long (10 mm: chosen on the real-geometry validation split), on the
threshold's mask below that or when the network outlines nothing; either way the edge is decided on the
scan's own voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.nets import UNet
from monai.transforms import MapTransform
from torch import nn

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.measuring.measure import component_nearest, touches_border
from nodule_bundle.preprocessing.transforms import NoduleCrop


class CentredUNet(nn.Module):
    """MONAI's ``UNet`` (batch norm, one residual unit per level) for ``[B, 1, n, n, n]`` crops centred on
    a nodule, returning ``[B, 1, n, n, n]`` logits. A second input channel, a Gaussian bump at the crop's
    centre (``prior_width``: its standard deviation as a fraction of the half ``patch_size`` it is trained
    on; the same width in voxels for a crop of another size), tells it which of the objects in the crop is
    the nodule asked about. It takes any crop whose side its levels can halve (a multiple of 8 for four
    levels): trained on ``patch_size``, it outlines a large nodule whole in a larger crop."""

    def __init__(self, patch_size: int = 48, channels: Sequence[int] = (16, 32, 64, 128), prior_width: float = 0.3):
        super().__init__()
        self.unet = UNet(3, 2, 1, channels=tuple(channels), strides=(2,) * (len(channels) - 1), num_res_units=1, norm="batch")
        self.prior_sigma_voxels = prior_width * (int(patch_size) - 1) / 2.0
        self.multiple = 2 ** (len(channels) - 1)

    def prior(self, size: int) -> torch.Tensor:
        """``[1, 1, size, size, size]``: the centre prior of a crop of ``size`` voxels."""
        axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
        square = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
        return torch.exp(-square / (2.0 * self.prior_sigma_voxels**2))[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if len(set(x.shape[2:])) != 1 or size % self.multiple:
            raise ValueError(f"CentredUNet takes cubic crops whose side is a multiple of {self.multiple}, got {tuple(x.shape[2:])}")
        prior = self.prior(size).to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1, -1)
        return self.unet(torch.cat([x, prior], dim=1))


class ReferenceMaskd(MapTransform):
    """The item's own nodule in its scan's reference label map: ``data[label_key]`` becomes
    ``data[key] == data[value_key]`` (uint8 0/1, the label map's geometry), for the segmentation's
    training. An item whose value is not in the map (the wrong file, or a nodule left out) is an error."""

    def __init__(self, keys: KeysCollection = "mask", value_key: str = "mask_value", label_key: str = "label"):
        super().__init__(keys)
        self.value_key, self.label_key = value_key, label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.first_key(d)
        labels, value = d.pop(key), int(d[self.value_key])  # type: ignore[call-overload]
        mask = labels == value
        if not bool(mask.any()):
            source = getattr(labels, "meta", {}).get("filename_or_obj", key)
            raise NoduleBundleError(f"{source}: no voxel labelled {value} (the nodule {d.get('nodule_id', '?')}'s reference mask)")
        d[self.label_key] = mask.to(torch.uint8) if isinstance(mask, torch.Tensor) else np.asarray(mask, np.uint8)
        return d


class NoduleSegmenter:
    """The learned mask's probability around a world point: ``network`` (a :class:`CentredUNet`, its
    weights loaded) on a ``patch_size`` crop of ``spacing_mm`` voxels, the HU window scaled to [0, 1]
    as in training; on a ``large_patch_size`` crop when the nodule it outlines reaches the first crop's
    border (96 mm at 1 mm: nodules up to about 90 mm). ``min_long_axis_mm``:
    :class:`~nodule_bundle.measuring.transforms.NoduleMeasured` measures on the learned mask when it is at least this long."""

    def __init__(
        self, network: nn.Module, patch_size: int = 48, spacing_mm: float = 1.0, hu_window: Sequence[float] = (-1000.0, 400.0),
        min_long_axis_mm: float = 10.0, device: str | torch.device = "cpu", large_patch_size: int = 96,
    ):  # fmt: skip
        self.network, self.device = network, torch.device(device)
        self.croppers = [NoduleCrop(size, spacing_mm) for size in (patch_size, large_patch_size)]
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.min_long_axis_mm = float(min_long_axis_mm)

    def probability(self, image: MetaTensor, center_world_mm: Sequence[float]) -> tuple[MetaTensor, NoduleCrop]:
        """``[1, n, n, n]`` probability that each voxel of the crop around the point is the nodule's, with
        the crop's affine, and the cropper that cut it (its ``source_box`` is the part of the scan it covers)."""
        low, high = self.hu_window
        self.network.eval()
        for cropper in self.croppers:
            crop = cropper(image, center_world_mm)
            x = ((crop.as_tensor().clamp(low, high) - low) / (high - low))[None].to(self.device)
            with torch.no_grad():
                probability = torch.sigmoid(self.network(x))[0].float().cpu()
            if not touches_border(component_nearest(probability[0].numpy() > 0.5, (np.array(x.shape[2:]) - 1) / 2.0)):
                break
        return MetaTensor(probability, affine=crop.affine, meta={"space": crop.meta.get("space")}), cropper


def load_learned_masks(parser) -> None:
    """Load the learned segmentation's weights into a parsed ``inference.json``'s ``segmenter`` when it
    uses one (``learned_masks``), as its ``initialize`` does, for code that runs its preprocessing alone."""
    from ignite.engine import Engine

    if parser.get_parsed_content("learned_masks"):
        parser.get_parsed_content("segmenter_loader")(Engine(lambda engine, batch: None))
