"""MONAI datalists of nodules: one item per nodule, split into training / validation / test by scan.

An item is ``{"image": <path relative to the dataset dir>, "seriesuid", "nodule_id",
"center_world_mm": [x, y, z] (LPS), "diameter_mm", "malignancy" (0/1 or null), "texture"}``; it is read
with ``monai.data.load_decathlon_datalist(path, False, "training", dataset_dir)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nodule_bundle.nodule import Nodule

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


def build_datalist(items_by_scan: Mapping[str, list[dict]], seed: int, **extra) -> dict:
    """A datalist dict with the three splits, scans never shared between splits."""
    assignment = split_scans(list(items_by_scan), seed)
    datalist: dict = {**extra, **{s: [] for s in SPLITS}}
    for scan_id, items in items_by_scan.items():
        datalist[assignment[scan_id]].extend(items)
    return datalist
