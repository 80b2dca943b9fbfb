"""Combined multi-task loss with per-head masking of missing labels."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nodule_bundle.networks import DIAMETER, MALIGNANCY, NODULE, SIZE_BAND


class MultiTaskNoduleLoss(nn.Module):
    """``w_m * CE(malignancy) + w_b * CE(size band) + w_d * SmoothL1(diameter, beta=1 mm) + w_n * CE(nodule)``.

    ``target`` is ``[B, 4]``: malignancy (0/1, -1 unknown), size band (0..3, -1 unknown), diameter mm
    (NaN unknown), is-nodule (0/1, -1 unknown; candidates that are vessels or walls are 0). Unknown labels are left out of their head's mean, never replaced by a guess; a head
    with no labels in the batch contributes zero.
    """

    def __init__(
        self, malignancy_weight: float = 1.0, size_band_weight: float = 1.0, diameter_weight: float = 0.5, nodule_weight: float = 1.0
    ):
        super().__init__()
        self.weights = (malignancy_weight, size_band_weight, diameter_weight, nodule_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(pred.device)
        malignancy, band, diameter, nodule = target[:, 0], target[:, 1], target[:, 2], target[:, 3]
        zero = pred.sum() * 0.0
        terms = []
        known = malignancy >= 0
        terms.append(F.cross_entropy(pred[known, MALIGNANCY], malignancy[known].long()) if known.any() else zero)
        known = band >= 0
        terms.append(F.cross_entropy(pred[known, SIZE_BAND], band[known].long()) if known.any() else zero)
        known = torch.isfinite(diameter)
        terms.append(
            F.smooth_l1_loss(pred[known, DIAMETER].squeeze(1), diameter[known], beta=1.0)
            if known.any()
            else zero
        )
        known = nodule >= 0
        terms.append(F.cross_entropy(pred[known, NODULE], nodule[known].long()) if known.any() else zero)
        return sum(w * t for w, t in zip(self.weights, terms))
