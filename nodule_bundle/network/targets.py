"""The network's targets and outputs as MONAI transforms: the training label built from an item
(:class:`NoduleTargetsd`), the output channels named and calibrated (:class:`NoduleHeadsd`)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch
from monai.transforms import MapTransform

from nodule_bundle.core.nodule import RATING_COLUMNS, size_band
from nodule_bundle.network.networks import DIAMETER, MALIGNANCY, NODULE, RATINGS, SIZE_BAND


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
    :func:`~nodule_bundle.evaluation.calibration.fit_temperature`; float64, so that a temperature never
    ties or reorders nodules whose float32 probabilities would round alike), ``malignancy_prob_uncalibrated`` ``[1]`` and
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
        logits = pred[MALIGNANCY].double()  # float64: any temperature keeps the logits' order, ties included
        probs = torch.softmax(logits / self.temperature, dim=0)
        d["malignancy_probs"], d["malignancy_prob"] = probs, probs[1:]
        d["malignancy_prob_uncalibrated"] = torch.softmax(logits, dim=0)[1:]
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
