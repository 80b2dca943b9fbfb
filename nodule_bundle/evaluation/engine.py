"""The inference engine's batches when a scan may have no nodules: a scan item becomes one sample per
nodule (MONAI's multi-sample crops), and a scan in which there is none one record of the scan
(:class:`~nodule_bundle.preprocessing.transforms.NoduleCropd`), which the network never sees."""

from __future__ import annotations

from monai.data import list_data_collate
from monai.engines import SupervisedEvaluator


def collate_nodules(scans: list[list[dict]]) -> dict | list[dict]:
    """MONAI's ``list_data_collate`` of every scan's nodule samples; when there are none, the list of
    the scans' records (samples without an image). The configs batch one scan at a time: a record
    beside another scan's nodules in one batch would not be reported."""
    samples = [sample for scan in scans for sample in scan]
    nodules = [sample for sample in samples if "scan_meta" not in sample]
    return list_data_collate(nodules) if nodules else samples


def skip_empty_batches(engine: SupervisedEvaluator, batch: dict | list[dict]) -> dict | list:
    """``SupervisedEvaluator``'s own iteration, except that a batch of scan records (scans without
    nodules) produces an empty output without running the network; the report's handler records
    those scans."""
    if isinstance(batch, list):
        return []
    return engine._iteration(engine, batch)
