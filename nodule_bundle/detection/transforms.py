"""Whole-scan detection as a MONAI transform: ``configs/inference.json`` runs it right after the one
read of the scan, so a scan without a nodule list is read once, then detected, measured and cropped."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from nodule_bundle.detection.candidates import Candidate, candidate_fields, detect_candidates, lung_mask
from nodule_bundle.reading.image_index import scan_stem


class DetectNodulesd(MapTransform):
    """Find the nodule candidates of a scan item that comes without a nodule list.

    An item without ``center_key`` gains the candidates' fields (:func:`candidate_fields`: centres,
    ids ``d01``..., detection scores and radii, strongest first; empty lists when nothing is found)
    and, when it has none, its ``seriesuid`` (the DICOM series, else the file's stem). An item with a
    nodule list passes unchanged. The image is the first of ``keys``. ``spacing_mm`` and ``min_score`` are the bundle's
    ``detection_spacing_mm`` and ``detection_min_score``. The two stages, :meth:`lung_mask` and
    :meth:`candidates`, are the ones the whole-scan benchmark times.
    """

    def __init__(self, keys: KeysCollection, spacing_mm: float, min_score: float, center_key: str = "center_world_mm"):
        super().__init__(keys)
        self.spacing_mm, self.min_score, self.center_key = float(spacing_mm), float(min_score), center_key

    def lung_mask(self, image: MetaTensor) -> MetaTensor:
        return lung_mask(image)

    def candidates(self, image: MetaTensor, mask: MetaTensor) -> list[Candidate]:
        return detect_candidates(image, spacing_mm=self.spacing_mm, min_score=self.min_score, mask=mask)

    def with_candidates(self, data: Mapping[Hashable, object], found: list[Candidate]) -> dict:
        """``data`` with the fields of the candidates ``found`` in its image, and its ``seriesuid``."""
        d = {**data, **candidate_fields(found)}
        if not d.get("seriesuid"):
            image = d[self.first_key(d)]
            d["seriesuid"] = image.meta.get("series_uid") or scan_stem(Path(str(image.meta["filename_or_obj"])))
        return d

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        if data.get(self.center_key) is not None:
            return dict(data)
        image = data[self.first_key(dict(data))]
        return self.with_candidates(data, self.candidates(image, self.lung_mask(image)))
