"""Nodule annotations in a MONAI Label datastore, and the training datalist made from them.

A study's annotation is its final label stored as JSON (``PUT /datastore/label?image=<id>&tag=final``
with a ``.json`` file; it lands in ``labels/final/<id>.json``)::

    {"nodules": [{"center_world_mm": [x, y, z], "diameter_mm": 8.5, "malignancy": 1, "texture": "solid"}]}

Centres are world millimetres in the scanner's LPS frame, as in the bundle's nodule CSVs;
``malignancy`` (0, 1 or null) and ``texture`` are optional.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from nodule_bundle.core.nodule import Nodule
from nodule_bundle.data.datalist import SPLITS, nodule_item
from nodule_bundle.data.nodule_csv import NoduleListError
from nodule_bundle.reading.image_index import scan_stem


def read_annotation(path: str | Path, seriesuid: str) -> list[Nodule]:
    """The nodules of one study's JSON annotation; a malformed file raises naming it and the entry."""
    path = Path(path)
    if path.suffix != ".json":
        raise NoduleListError(f"{path}: annotations are read from JSON labels (<id>.json), not {path.suffix} label maps")
    try:
        entries = json.loads(path.read_text())["nodules"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NoduleListError(f"{path}: not a nodule annotation ({{\"nodules\": [...]}} expected: {err})") from None
    nodules = []
    for k, entry in enumerate(entries):
        try:
            center = tuple(float(v) for v in entry["center_world_mm"])
            diameter = float(entry["diameter_mm"])
            malignancy = entry.get("malignancy")
            if len(center) != 3 or not all(map(math.isfinite, (*center, diameter))) or diameter <= 0 or malignancy not in (0, 1, None):
                raise ValueError("centre [x, y, z], diameter > 0 and malignancy 0, 1 or null expected")
        except (KeyError, TypeError, ValueError) as err:
            raise NoduleListError(f"{path}: nodules[{k}]: {err}") from None
        nodules.append(Nodule(f"{seriesuid}-{k:02d}", seriesuid, center, diameter, malignancy, entry.get("texture")))
    return nodules


def training_datalist(datastore_items: Sequence[dict], val_split: float = 0.2) -> dict:
    """A bundle datalist (absolute image paths) from the datastore's ``[{"image", "label"}, ...]``.

    Studies, not nodules, are split: the last ``val_split`` of them (at least one) validate. A single
    annotated study is used for both, since the trainer needs a validation split.
    """
    by_scan = {}
    for entry in sorted(datastore_items, key=lambda e: str(e["image"])):
        uid = scan_stem(Path(entry["image"]))
        by_scan[uid] = [nodule_item(str(entry["image"]), n) for n in read_annotation(entry["label"], uid)]
    by_scan = {uid: items for uid, items in by_scan.items() if items}
    if not by_scan:
        raise NoduleListError("no annotated study in the datastore: store a <id>.json label with its nodules first")
    scans = list(by_scan)
    n_val = max(1, round(val_split * len(scans))) if len(scans) > 1 else 0
    val = scans[len(scans) - n_val :] if n_val else scans
    train = scans[: len(scans) - n_val] if n_val else scans
    datalist = {split: [] for split in SPLITS}
    datalist["training"] = [item for uid in train for item in by_scan[uid]]
    datalist["validation"] = [item for uid in val for item in by_scan[uid]]
    return datalist
