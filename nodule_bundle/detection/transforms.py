"""Whole-scan detection as a MONAI transform: ``configs/inference.json`` runs it right after the one
read of the scan, so a scan without a nodule list is read once, then detected, measured and cropped."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from nodule_bundle.core.geometry import voxel_size
from nodule_bundle.detection.candidates import MIN_ROUND_SCORE, Candidate, candidate_fields, detect_candidates, lung_mask
from nodule_bundle.reading.image_index import scan_stem

#: A lung mask outside this range (ml) is not a pair of lungs: adults' hold 2,000-8,000 ml, the
#: phantom's 140 mm field about 900 ml.
PLAUSIBLE_LUNG_ML = (100.0, 12000.0)


def detection_facts(mask: MetaTensor, found: list[Candidate]) -> dict:
    """What the whole-scan search saw: the lung mask's volume (ml), the candidates found and, when
    the mask is empty or implausible, a ``warning`` that says so (nodules outside the mask are not
    searched). The key is absent when all is well, so the facts collate as MONAI batches them."""
    volume_ml = float(mask.sum()) * float(voxel_size(mask.affine).prod()) / 1000.0
    facts = {"lung_volume_ml": round(volume_ml), "candidates": len(found)}
    low, high = PLAUSIBLE_LUNG_ML
    if volume_ml == 0:
        facts["warning"] = ("no lung found, so nothing was searched: the lung mask keeps the air inside the body, and air "
                            "that touches the field of view's edge counts as outside it (a field of view that cuts "
                            "through the lungs leaves none)")  # fmt: skip
    elif not low <= volume_ml <= high:
        facts["warning"] = (f"the lung mask holds {volume_ml:.0f} ml, outside {low:.0f}-{high:.0f} ml: not a pair of lungs, "
                            "so the search may have missed nodules or looked outside the lungs")  # fmt: skip
    return facts


class DetectNodulesd(MapTransform):
    """Find the nodule candidates of a scan item that comes without a nodule list.

    An item without ``center_key`` gains the candidates' fields (:func:`candidate_fields`: centres,
    ids ``d01``..., detection scores and radii, strongest first; empty lists when nothing is found),
    ``detection`` (:func:`detection_facts`: lung volume, candidate count, a warning when the lung
    mask is empty or implausible) and, when it has none, its ``seriesuid`` (the DICOM series, else
    the file's stem). An item with a
    nodule list passes unchanged. The image is the first of ``keys``. ``spacing_mm``, ``min_score`` and
    ``min_round_score`` are the bundle's ``detection_spacing_mm``, ``detection_min_score`` and
    ``detection_min_round_score`` (:func:`detect_candidates`). The two stages, :meth:`lung_mask` and
    :meth:`candidates`, are the ones the whole-scan benchmark times.
    """

    def __init__(
        self, keys: KeysCollection, spacing_mm: float, min_score: float, min_round_score: float = MIN_ROUND_SCORE, center_key: str = "center_world_mm"
    ):  # fmt: skip
        super().__init__(keys)
        self.spacing_mm, self.min_score, self.min_round_score, self.center_key = float(spacing_mm), float(min_score), float(min_round_score), center_key

    def lung_mask(self, image: MetaTensor) -> MetaTensor:
        return lung_mask(image)

    def candidates(self, image: MetaTensor, mask: MetaTensor) -> list[Candidate]:
        return detect_candidates(image, spacing_mm=self.spacing_mm, min_score=self.min_score, min_round_score=self.min_round_score, mask=mask)

    def with_candidates(self, data: Mapping[Hashable, object], found: list[Candidate], mask: MetaTensor) -> dict:
        """``data`` with the fields of the candidates ``found`` in its image within the lung ``mask``,
        the search's facts and its ``seriesuid``."""
        d = {**data, **candidate_fields(found), "detection": detection_facts(mask, found)}
        if not d.get("seriesuid"):
            image = d[self.first_key(d)]
            d["seriesuid"] = image.meta.get("series_uid") or scan_stem(Path(str(image.meta["filename_or_obj"])))
        return d

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        if data.get(self.center_key) is not None:
            return dict(data)
        image = data[self.first_key(dict(data))]
        mask = self.lung_mask(image)
        return self.with_candidates(data, self.candidates(image, mask), mask)
