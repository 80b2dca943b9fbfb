"""Ignite handlers the configs attach to MONAI engines: the nodule report, a metrics JSON and the
detection FROC."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_roc_auc

from nodule_bundle.data.image_index import scan_stem
from nodule_bundle.froc import froc, hit_matrix, plot_froc, system_score
from nodule_bundle.io_utils import write_json_atomic
from nodule_bundle.report import is_rejected_candidate, nodule_finding, write_report


class NoduleReportWriter:
    """Collect every nodule's finding during an evaluator run; write the report when it completes.

    Args:
        output_dir: where ``report.json`` and ``report.csv`` go.
        model_version: the bundle version recorded in the report.
        image, seriesuid: the scan examined, reported with no nodules when none was found in it.
        min_nodule_probability: false-positive reduction: a *detected* candidate whose nodule
            probability is lower goes to the scan's ``rejected_candidates``, not its ``nodules``.
            Nodules given by a list are always reported.
    """

    def __init__(
        self,
        output_dir: str | Path,
        model_version: str | None = None,
        image: str | None = None,
        seriesuid: str | None = None,
        min_nodule_probability: float = 0.5,
    ):
        self.output_dir, self.model_version = Path(output_dir), model_version
        self.image, self.seriesuid, self.min_nodule_probability = image, seriesuid, min_nodule_probability
        self._scans: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._scans.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            image_name = Path(str(item["image"].meta["filename_or_obj"])).name
            uid = str(item.get("seriesuid") or image_name)
            scan = self._scans.setdefault(uid, {"seriesuid": uid, "image": image_name, "nodules": []})
            finding = nodule_finding(item, output)
            if is_rejected_candidate(finding, self.min_nodule_probability):
                scan.setdefault("rejected_candidates", []).append(finding)
            else:
                scan["nodules"].append(finding)

    def _write(self, engine: Engine) -> None:
        if not self._scans and self.image is not None:  # a scan without nodules is a finding too
            uid = self.seriesuid or scan_stem(Path(self.image))
            self._scans[uid] = {"seriesuid": uid, "image": Path(self.image).name, "nodules": []}
        write_report(self.output_dir, list(self._scans.values()), self.model_version)


class MetricsJSONWriter:
    """Write ``engine.state.metrics`` and the number of evaluated nodules (items that are not false
    candidates) to a JSON file on completion."""

    def __init__(self, path: str | Path, count_key: str = "n_items"):
        self.path, self.count_key = Path(path), count_key
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count_items)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._count = 0

    def _count_items(self, engine: Engine) -> None:  # nodules, not the false candidates (nodule_true 0)
        self._count += sum(int(item.get("nodule_true", 1)) != 0 for item in engine.state.output)

    def _write(self, engine: Engine) -> None:
        metrics = {  # a metric without labels to compute it on (NaN) is written as null
            k: float(v) if math.isfinite(v) else None for k, v in engine.state.metrics.items() if isinstance(v, (int, float))
        }
        write_json_atomic(self.path, {**metrics, self.count_key: self._count})


class TrainedItemsWriter:
    """Record the items (``key``, e.g. ``nodule_id``) this process trained on, and write them to
    ``<output_dir>/trained_items_rank<r>.json`` when training completes: which rank of a distributed
    run saw which data (an audit of the sampler)."""

    def __init__(self, output_dir: str | Path, key: str = "nodule_id"):
        self.output_dir, self.key = Path(output_dir), key
        self._seen: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._seen.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self._seen.extend(str(i[self.key]) for i in e.state.batch))
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        write_json_atomic(self.output_dir / f"trained_items_rank{rank}.json", {"rank": rank, "items": self._seen})


class DetectionFROCWriter:
    """Score whole-scan detection against reference nodules when an evaluator run completes.

    Collects every detected candidate (centre, ``nodule_prob``, ``detection_score``) per scan, matches
    them to ``reference`` (datalist items with ``center_world_mm`` and ``diameter_mm``; items with
    ``is_nodule: 0`` are not nodules) and writes ``froc.json`` and ``froc.png``: FROC curve and CPM of
    the whole system (:func:`~nodule_bundle.froc.system_score`), of the detector alone and of the
    network's nodule probability alone, plus the malignancy
    AUC on the detected true nodules (best-matching candidate) beside the size-only AUC, and
    ``detections.json``: every candidate's finding per scan, for analysis beyond the FROC. The curves
    are given for all reference nodules and for those of at least ``min_diameter_mm`` (smaller ones
    then count neither as hits nor as false positives).
    """

    def __init__(self, reference: list[dict], output_dir: str | Path, min_diameter_mm: float = 4.0):
        self.output_dir, self.min_diameter_mm = Path(output_dir), float(min_diameter_mm)
        self.reference: dict[str, list[dict]] = {}
        for item in reference:
            if item.get("is_nodule", 1) and item.get("diameter_mm"):
                self.reference.setdefault(str(item["image"]), []).append(item)
        self._found: dict[str, list[dict]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._found.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            self._found.setdefault(str(item["image"].meta["filename_or_obj"]), []).append(nodule_finding(item, output))

    def _write(self, engine: Engine) -> None:
        scans = []
        for image, nodules in self.reference.items():
            found = self._found.get(image, [])
            scans.append((
                np.array([f["center_world_mm"] for f in found]).reshape(-1, 3),
                {key: np.array([f[key] for f in found]) for key in ("nodule_probability", "detection_score")}
                | {"system": system_score([f["nodule_probability"] for f in found], [f["detection_score"] for f in found])},
                np.array([n["center_world_mm"] for n in nodules]).reshape(-1, 3),
                np.array([n["diameter_mm"] / 2 for n in nodules]),
                found, nodules,
            ))  # fmt: skip
        curves = {}
        for name, key in (("detector + network", "system"), ("detector alone", "detection_score"), ("network alone", "nodule_probability")):
            curves[name] = froc([(c, s[key], n, r) for c, s, n, r, _, _ in scans])
            large = [(c, s[key], n[r * 2 >= self.min_diameter_mm], r[r * 2 >= self.min_diameter_mm], n[r * 2 < self.min_diameter_mm],
                      r[r * 2 < self.min_diameter_mm]) for c, s, n, r, _, _ in scans]  # fmt: skip
            curves[f"{name}, >= {self.min_diameter_mm:g} mm"] = froc(large)
        result = {"curves": curves, "cpm": curves["detector + network"]["cpm"], **self._malignancy_on_detected(scans)}
        write_json_atomic(self.output_dir / "froc.json", result)
        write_json_atomic(self.output_dir / "detections.json", {"scans": [{"image": image, "candidates": self._found.get(image, [])} for image in self.reference]})
        plot_froc(result, self.output_dir / "froc.png", title=f"FROC on {len(scans)} scans, {curves['detector alone']['n_nodules']} nodules")

    @staticmethod
    def _malignancy_on_detected(scans) -> dict:
        """Malignancy AUC over the labelled nodules the detector hit, with their size-only AUC."""
        probs, sizes, labels = [], [], []
        for centres, _, nodule_centres, radii, found, nodules in scans:
            hits_of = hit_matrix(centres, nodule_centres, radii)
            for k, nodule in enumerate(nodules):
                hits = [f for f, hit in zip(found, hits_of[:, k]) if hit]
                if hits and nodule.get("malignancy") is not None:
                    best = max(hits, key=lambda f: f["nodule_probability"])
                    probs.append(best["malignancy_probability"])
                    sizes.append(nodule["diameter_mm"])
                    labels.append(int(nodule["malignancy"]))
        if len(set(labels)) < 2:
            return {"malignancy_auc_detected": None, "size_only_auc_detected": None, "n_detected_labelled": len(labels)}
        y = torch.tensor(labels)
        return {
            "malignancy_auc_detected": float(compute_roc_auc(torch.tensor(probs), y)),
            "size_only_auc_detected": float(compute_roc_auc(torch.tensor(sizes), y)),
            "n_detected_labelled": len(labels),
        }
