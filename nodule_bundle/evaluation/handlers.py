"""Ignite handlers the configs attach to MONAI engines for evaluation: a metrics JSON, the per-item
predictions, the count of rated nodules, the evaluation figures, temperature scaling and the
detection FROC."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.metrics import compute_roc_auc
from monai.utils import CommonKeys as Keys

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import write_json_atomic, write_text_atomic
from nodule_bundle.core.nodule import RATING_COLUMNS
from nodule_bundle.detection.froc import froc, hit_matrix, system_score
from nodule_bundle.evaluation.plots import plot_froc
from nodule_bundle.reports.report import (
    nodule_finding,
)


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
        metrics = {  # a metric without labels to compute it on (NaN) is written as null; tables as lists
            k: (float(v) if math.isfinite(v) else None) if isinstance(v, (int, float)) else v
            for k, v in engine.state.metrics.items() if isinstance(v, (int, float, list))
        }  # fmt: skip
        write_json_atomic(self.path, {**metrics, self.count_key: self._count})


#: ``predictions.csv``: the item's identity, then each reference label beside the network's prediction
#: (each semantic rating as ``<rating>_true``, ``<rating>_pred``).
PREDICTION_COLUMNS = ("seriesuid", "nodule_id", "nodule_true", "nodule_prob", "malignancy_true", "malignancy_prob",
                      "size_band_true", "size_band", "diameter_mm_true", "diameter_mm_pred",
                      *(f"{name}_{kind}" for name in RATING_COLUMNS for kind in ("true", "pred")))  # fmt: skip


class PredictionsWriter:
    """Write ``path`` (``predictions.csv``) when an evaluator run completes: one row per item it saw
    (false candidates too), columns :data:`PREDICTION_COLUMNS`, an unknown label as an empty cell.
    For analyses the summary metrics cannot give: two models compared nodule by nodule on the same
    test set (``bench backbone-accuracy``), a site's own statistics."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            values = {**output, **_per_rating(output, "ratings_true", "true"), **_per_rating(output, "ratings_pred", "pred")}
            cells = (_cell(values.get(key), is_label=key.endswith("_true")) for key in PREDICTION_COLUMNS[2:])
            self._rows.append([str(item.get("seriesuid", "")), str(item.get("nodule_id", "")), *cells])

    def _write(self, engine: Engine) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        writer.writerows(self._rows)
        write_text_atomic(self.path, buffer.getvalue())


def _per_rating(output: dict, key: str, kind: str) -> dict:
    """``{"<rating>_<kind>": value}`` from an output's ratings vector ``key`` (nothing without it)."""
    values = output.get(key)
    return {} if values is None else {f"{name}_{kind}": v for name, v in zip(RATING_COLUMNS, torch.as_tensor(values).flatten())}


def _cell(value, is_label: bool) -> str:
    """One prediction or label as a CSV cell: ``""`` when absent, NaN or (a label) an unknown class (< 0)."""
    if value is None:
        return ""
    number = float(torch.as_tensor(value).flatten()[0])
    return "" if not math.isfinite(number) or (is_label and number < 0) else f"{number:.9g}"  # float32 round trip


class RatedNodulesCounter:
    """Count the rated nodules (any semantic rating known in the loss's targets) each training step
    shows ``network``, into its ``rated_nodules_seen`` buffer: saved with the weights, it tells
    inference whether the rating heads were ever trained (a phantom-only model's are not)."""

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._count)

    def _count(self, engine: Engine) -> None:
        output = engine.state.output  # decollated into items first when the trainer decollates (its default)
        targets = torch.stack([torch.as_tensor(o[Keys.LABEL]) for o in output]) if isinstance(output, list) else output[Keys.LABEL]
        self.network.rated_nodules_seen += torch.isfinite(targets[:, 4:]).any(dim=1).sum().to(self.network.rated_nodules_seen)


class DetectionFROCWriter:
    """Score whole-scan detection against reference nodules when an evaluator run completes.

    Collects every detected candidate (centre, ``nodule_prob``, ``detection_score``) per scan, matches
    them to ``reference`` (datalist items with ``center_world_mm`` and ``diameter_mm``; items with
    ``is_nodule: 0`` are not nodules) and writes ``froc.json`` and ``froc.png``: FROC curve and CPM of
    the whole system (:func:`~nodule_bundle.detection.froc.system_score`), of the detector alone and of the
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


def _labelled(outputs: list[dict], key: str) -> list[dict]:
    """The decollated outputs whose ``key`` label is known (class >= 0, diameter finite)."""
    known = []
    for o in outputs:
        value = torch.as_tensor(o[key]).float().flatten()
        if len(value) and bool(torch.isfinite(value).all()) and bool((value >= 0).all()) and int(o.get("nodule_true", 1)) != 0:
            known.append(o)
    return known


def _first(o: dict, key: str) -> float:
    return float(torch.as_tensor(o[key]).flatten()[0])


class _OutputCollector:
    """Keep every decollated output of an evaluator run; ``_write`` them when it completes."""

    _outputs: list[dict]

    def attach(self, engine: Engine) -> None:
        self._outputs = []
        engine.add_event_handler(Events.STARTED, lambda _: self._outputs.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self._outputs.extend(e.state.output))
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        raise NotImplementedError


class EvaluationPlotsWriter(_OutputCollector):
    """The evaluation figures, from every nodule an evaluator run saw (false candidates left out):

    - ``roc.png``: ROC of P(malignant) with the size-only baseline (reference diameter) on the same axes;
    - ``calibration.png``: reliability diagram, before and after temperature scaling, with their ECE;
    - ``size_band_confusion.png``: reference against predicted Lung-RADS size band;
    - ``bland_altman.png``: the network's diameter against the reference diameter.

    Their numbers go into ``engine.state.metrics`` (``ece``, ``ece_uncalibrated``, ``size_only_auc``,
    ``diameter_bias_mm``, ``diameter_limits_of_agreement_mm``, ``size_band_confusion``) before the
    handlers attached after it (:class:`MetricsJSONWriter`) see them.
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

    def _write(self, engine: Engine) -> None:
        from nodule_bundle.evaluation.calibration import expected_calibration_error, reliability_bins
        from nodule_bundle.evaluation.plots import plot_bland_altman, plot_confusion, plot_reliability, plot_roc, roc_curve

        metrics = engine.state.metrics
        malignancy = _labelled(self._outputs, "malignancy_true")
        labels = [int(o["malignancy_true"]) for o in malignancy]
        if len(set(labels)) == 2:
            prob, raw = ([_first(o, key) for o in malignancy] for key in ("malignancy_prob", "malignancy_prob_uncalibrated"))
            size = [_first(o, "diameter_mm_true") for o in malignancy]
            y = torch.tensor(labels)
            curves = {
                name: (*roc_curve(scores, labels), float(compute_roc_auc(torch.tensor(scores), y)))
                for name, scores in (("network", prob), ("size only (reference diameter)", size))
            }
            plot_roc(curves, self.output_dir / "roc.png", title=f"malignancy, {len(labels)} nodules")
            metrics["size_only_auc"] = curves["size only (reference diameter)"][2]
            metrics["ece"], metrics["ece_uncalibrated"] = (expected_calibration_error(p, labels) for p in (prob, raw))
            plot_reliability(
                {f"uncalibrated (ECE {metrics['ece_uncalibrated']:.3f})": reliability_bins(raw, labels),
                 f"as reported (ECE {metrics['ece']:.3f})": reliability_bins(prob, labels)},
                self.output_dir / "calibration.png", title=f"calibration of P(malignant), {len(labels)} nodules",
            )  # fmt: skip
        banded = _labelled(self._outputs, "size_band_true")
        if banded:
            matrix = np.zeros((4, 4), dtype=int)
            for o in banded:
                matrix[int(o["size_band_true"]), int(o["size_band"])] += 1
            plot_confusion(matrix, self.output_dir / "size_band_confusion.png", title=f"Lung-RADS size band, {len(banded)} nodules")
            metrics["size_band_confusion"] = matrix.tolist()
        sized = _labelled(self._outputs, "diameter_mm_true")
        if sized:
            agreement = plot_bland_altman(
                [_first(o, "diameter_mm_true") for o in sized], [_first(o, "diameter_mm_pred") for o in sized],
                self.output_dir / "bland_altman.png", title=f"network diameter, {len(sized)} nodules",
            )  # fmt: skip
            metrics["diameter_bias_mm"], metrics["diameter_limits_of_agreement_mm"] = agreement["bias_mm"], agreement["limits_of_agreement_mm"]


class TemperatureFitter(_OutputCollector):
    """Temperature scaling on an evaluator run over the validation split: fit ``T`` to the nodules'
    malignancy logits (:func:`~nodule_bundle.evaluation.calibration.fit_temperature`) and write ``path``
    (``models/calibration.json``) with ``T``, the split's ECE before and after, and the count."""

    def __init__(self, path: str | Path, split: str = "validation"):
        self.path, self.split = Path(path), split

    def _write(self, engine: Engine) -> None:
        from nodule_bundle.evaluation.calibration import expected_calibration_error, fit_temperature

        known = _labelled(self._outputs, "malignancy_true")
        logits = torch.stack([torch.as_tensor(o["malignancy_logits"]).float() for o in known]) if known else torch.zeros(0, 2)
        labels = torch.tensor([int(o["malignancy_true"]) for o in known])
        if len(set(labels.tolist())) < 2:
            raise NoduleBundleError(
                f"{self.path}: cannot fit a temperature: the {self.split} split has {len(labels)} nodules with a malignancy "
                "label, not both benign and malignant ones"
            )
        temperature = fit_temperature(logits, labels)
        before, after = (expected_calibration_error(torch.softmax(logits / t, dim=1)[:, 1], labels) for t in (1.0, temperature))
        result = {"malignancy_temperature": temperature, "fitted_on": self.split, "n_nodules": len(labels), "ece_before": before, "ece_after": after}
        write_json_atomic(self.path, result)
        engine.state.metrics.update({"malignancy_temperature": temperature, "ece_before": before, "ece_after": after})


