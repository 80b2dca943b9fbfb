"""The inference engine's batches when a scan may have no nodules: a scan item becomes one sample per
nodule (MONAI's multi-sample crops), so a scan in which detection found nothing is an empty batch."""

from __future__ import annotations

from monai.data import list_data_collate
from monai.engines import SupervisedEvaluator


def collate_nodules(scans: list) -> dict | list:
    """MONAI's ``list_data_collate`` of every scan's nodule samples; ``[]`` when there are none."""
    return list_data_collate(scans) if any(scans) else []


def skip_empty_batches(engine: SupervisedEvaluator, batch: dict | list) -> dict | list:
    """``SupervisedEvaluator``'s own iteration, except that an empty batch (a scan without nodules)
    produces an empty output without running the network (a single scan is then reported with no
    nodules)."""
    if not batch:
        return []
    return engine._iteration(engine, batch)
