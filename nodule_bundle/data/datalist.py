"""MONAI datalists of nodules: one item per nodule, split into training / validation / test by scan.

An item is ``{"image": <path relative to the dataset dir>, "seriesuid", "nodule_id",
"center_world_mm": [x, y, z] (LPS), "diameter_mm", "malignancy" (0/1 or null), "texture"}``; it is read
with ``monai.data.load_decathlon_datalist(path, False, "training", dataset_dir)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.nodule import Nodule
from nodule_bundle.data.nodule_csv import NoduleListError, read_nodule_csv
from nodule_bundle.reading.image_index import scan_stem

SPLITS = ("training", "validation", "test")


def nodule_item(image: str, nodule: Nodule) -> dict:
    return {
        "image": image,
        "seriesuid": nodule.seriesuid,
        "nodule_id": nodule.nodule_id,
        "center_world_mm": [float(v) for v in nodule.center_world_mm],
        "diameter_mm": None if np.isnan(nodule.diameter_mm) else float(nodule.diameter_mm),
        "malignancy": nodule.malignancy,
        "texture": nodule.texture,
    }


def split_scans(scan_ids: Sequence[str], seed: int, fractions: tuple[float, float] = (0.15, 0.15)) -> dict[str, str]:
    """Assign each scan to a split (deterministic for ``seed``); validation and test get >= 1 scan when n >= 3."""
    order = np.random.default_rng(seed).permutation(len(scan_ids))
    n = len(scan_ids)
    n_val = max(1, round(fractions[0] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[1] * n)) if n >= 3 else 0
    split = {}
    for rank, i in enumerate(order):
        split[scan_ids[i]] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "training"
    return split


def build_datalist(items_by_scan: Mapping[str, list[dict]], seed: int, fractions: tuple[float, float] = (0.15, 0.15), **extra) -> dict:
    """A datalist dict with the three splits (``fractions``: of the scans for validation and test, see
    :func:`split_scans`), scans never shared between splits."""
    assignment = split_scans(list(items_by_scan), seed, fractions)
    datalist: dict = {**extra, **{s: [] for s in SPLITS}}
    for scan_id, items in items_by_scan.items():
        datalist[assignment[scan_id]].extend(items)
    return datalist


def build_datalist_from_folds(
    items_by_scan: Mapping[str, list[dict]], fold_of_scan: Mapping[str, int], val_fold: int, test_fold: int | None, **extra
) -> dict:
    """A datalist whose splits follow cross-validation folds: ``val_fold`` -> validation, ``test_fold``
    -> test, every other fold -> training. Each item keeps its ``fold`` so that other splits can be drawn."""
    if val_fold == test_fold:
        raise ValueError(f"the validation and test folds must differ, both are {val_fold}")
    datalist: dict = {**extra, **{s: [] for s in SPLITS}}
    for scan_id, items in items_by_scan.items():
        fold = fold_of_scan[scan_id]
        split = "validation" if fold == val_fold else "test" if fold == test_fold else "training"
        datalist[split].extend({**item, "fold": fold} for item in items)
    return datalist


def relative_image_path(image: Path, dataset_dir: Path) -> str:
    """The image path a datalist stores: relative to the dataset directory (``--dataset_dir``)."""
    return Path(os.path.relpath(image, dataset_dir)).as_posix()


class DatalistError(NoduleBundleError):
    """A datalist that cannot be used; the message names the file and the problem."""


REQUIRED_ITEM_KEYS = ("image", "center_world_mm")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_nodule_datalist(datalist: str | Path, split: str, dataset_dir: str | Path | None = None) -> list[dict]:
    """Items of one split, image (and reference mask) paths resolved against ``dataset_dir`` (default: the datalist's folder).

    Uses ``monai.data.load_decathlon_datalist``; checks first that the file, the split, the keys and
    the image files exist, so that a bad datalist fails before training starts, naming what is wrong.
    """
    path = Path(datalist)
    if not path.is_file():
        raise DatalistError(f"{path}: datalist not found (pass --datalist and --dataset_dir)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatalistError(f"{path}: not a JSON datalist ({err})") from None
    if not isinstance(content, dict) or not isinstance(content.get(split), list):
        raise DatalistError(f"{path}: no list of items under the key {split!r}")
    if not content[split]:
        raise DatalistError(f"{path}: the {split!r} split is empty")
    for i, item in enumerate(content[split]):
        if not isinstance(item, dict):
            raise DatalistError(f"{path}: {split}[{i}] is not an object: {json.dumps(item)[:80]}")
        missing = [k for k in REQUIRED_ITEM_KEYS if k not in item]
        if missing:
            raise DatalistError(f"{path}: {split}[{i}] lacks {', '.join(missing)}")
        if not isinstance(item["image"], str) or not item["image"]:
            raise DatalistError(f"{path}: {split}[{i}]: image must be a file path, got {json.dumps(item['image'])[:80]}")
        centre = item["center_world_mm"]
        if not (isinstance(centre, list) and len(centre) == 3 and all(_is_finite_number(v) for v in centre)):
            raise DatalistError(f"{path}: {split}[{i}]: center_world_mm must be [x, y, z] in mm, got {json.dumps(centre)[:80]}")
    base = Path(dataset_dir) if dataset_dir is not None else path.parent
    items = load_decathlon_datalist(str(path), False, split, str(base))
    for i, item in enumerate(items):
        if isinstance(item.get("mask"), str):  # a reference label map, resolved as the image is
            item["mask"] = os.path.normpath(os.path.join(base, item["mask"]))
        if not os.path.exists(item["image"]):
            raise DatalistError(f"{path}: {split}[{i}]: image not found: {item['image']}")
    return items


def load_mask_datalist(datalist: str | Path, split: str, dataset_dir: str | Path | None = None) -> list[dict]:
    """The nodules of one split that have a reference mask (``mask``: their scan's label map, and
    ``mask_value`` > 0: their value in it, as ``synth`` writes them).
    For training and validating the learned segmentation (``configs/train_segmentation.json``)."""
    items = [item for item in load_nodule_datalist(datalist, split, dataset_dir) if int(item.get("mask_value") or 0) > 0]
    if not items:
        raise DatalistError(f"{datalist}: no nodule of the {split!r} split has a reference mask (items with mask and mask_value > 0, as synth writes)")
    for item in items:
        if not os.path.exists(item["mask"]):
            raise DatalistError(f"{datalist}: {split} nodule {item.get('nodule_id', '?')}: mask not found: {item['mask']}")
    return items


def has_reference_masks(datalist: str | Path) -> bool:
    """Whether a datalist's training nodules have reference masks (:func:`load_mask_datalist` finds some)."""
    try:
        load_mask_datalist(datalist, "training")
    except DatalistError:
        return False
    return True


def scan_item(image: str | Path | None, nodules: str | Path | None = None, seriesuid: str | None = None) -> dict:
    """One inference item: a scan and, given a nodule list, all its nodules (``center_world_mm``
    ``(N, 3)``, ``nodule_id`` and ``texture`` (``""`` when the list does not say) ``N``); without one,
    the scan alone, whose nodules the whole-scan path finds.

    ``nodules`` is a CSV in world mm (see :mod:`nodule_bundle.data.nodule_csv`). When it lists several
    series, the rows of ``seriesuid`` (default: the image's file stem, as LUNA16 names scans) are used.
    """
    if image is None:
        raise DatalistError("inference needs an image: pass --image PATH (and --nodules CSV to skip detection)")
    image = Path(image)
    if not image.exists():
        raise DatalistError(f"{image}: image not found")
    if nodules is None:
        return {"image": str(image), "seriesuid": seriesuid}
    found = read_nodule_csv(nodules)
    series = {n.seriesuid for n in found if n.seriesuid}
    if len(series) > 1:
        wanted = seriesuid or scan_stem(image)
        found = [n for n in found if n.seriesuid == wanted]
        if not found:
            raise NoduleListError(f"{nodules}: lists several series and none is {wanted!r}; pass --seriesuid")
    return {
        "image": str(image),
        "seriesuid": seriesuid or (found[0].seriesuid or scan_stem(image)),
        "center_world_mm": [list(n.center_world_mm) for n in found],
        "nodule_id": [n.nodule_id for n in found],
        "texture": [n.texture or "" for n in found],
    }


def scan_items(items: list[dict]) -> list[dict]:
    """One inference item per scan of a datalist split, without its nodules (the whole-scan path finds them)."""
    scans = {str(item["image"]): item.get("seriesuid") for item in items}
    return [{"image": image, "seriesuid": uid} for image, uid in scans.items()]
