"""Combined multi-task loss with per-head masking of missing labels."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nodule_bundle.network.networks import DIAMETER, MALIGNANCY, NODULE, RATINGS, SIZE_BAND

#: the target's columns: malignancy, size band, diameter mm, is-nodule, then one per semantic rating
TARGET_COLUMNS = 4 + RATINGS.stop - RATINGS.start


class MultiTaskNoduleLoss(nn.Module):
    """``w_m * CE(malignancy) + w_b * CE(size band) + w_d * SmoothL1(diameter, beta=1 mm) + w_n * CE(nodule)
    + w_r * SmoothL1(ratings, beta=0.5)``.

    ``target`` is ``[B, 11]`` (:class:`~nodule_bundle.network.targets.NoduleTargetsd`): malignancy (0/1, -1
    unknown), size band (0..3, -1 unknown), diameter mm (NaN unknown), is-nodule (0/1, -1 unknown;
    candidates that are vessels or walls are 0), then the readers' mean semantic ratings in
    :data:`~nodule_bundle.core.nodule.RATING_COLUMNS` order (NaN unknown; the rating term is the mean over
    the known ratings of the batch). Unknown labels are left out of their head's mean, never replaced
    by a guess; a head with no labels in the batch contributes zero.
    """

    def __init__(
        self, malignancy_weight: float = 1.0, size_band_weight: float = 1.0, diameter_weight: float = 0.5, nodule_weight: float = 1.0,
        rating_weight: float = 0.5,
    ):  # fmt: skip
        super().__init__()
        self.weights = (malignancy_weight, size_band_weight, diameter_weight, nodule_weight, rating_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != 2 or target.shape[1] != TARGET_COLUMNS:
            raise ValueError(f"the target must be [batch, {TARGET_COLUMNS}] (NoduleTargetsd), got {list(target.shape)}")
        target = target.to(pred.device)
        malignancy, band, diameter, nodule, ratings = target[:, 0], target[:, 1], target[:, 2], target[:, 3], target[:, 4:]
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
        known = torch.isfinite(ratings)
        terms.append(F.smooth_l1_loss(pred[:, RATINGS][known], ratings[known], beta=0.5) if known.any() else zero)
        return sum(w * t for w, t in zip(self.weights, terms))
