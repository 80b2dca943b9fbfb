"""Ignite handlers the configs attach to MONAI engines: the nodule report, a metrics JSON, the
per-item predictions, the evaluation figures, temperature scaling and the detection FROC."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader
from monai.metrics import compute_roc_auc
from monai.utils import CommonKeys as Keys

from nodule_bundle.core.checksums import listed_sha256, sha256_file
from nodule_bundle.core.errors import NoduleBundleError, require_yes_no
from nodule_bundle.core.io_utils import write_json_atomic, write_text_atomic
from nodule_bundle.core.nodule import RATING_COLUMNS
from nodule_bundle.detection.froc import froc, hit_matrix, system_score
from nodule_bundle.evaluation.plots import plot_froc
from nodule_bundle.reading.image_index import scan_stem
from nodule_bundle.reports.dicom import write_dicom_report
from nodule_bundle.reports.report import (
    BUNDLE_NAME,
    is_rejected_candidate,
    nodule_finding,
    scan_identity,
    write_report,
    write_scan_pictures,
)


class NoduleReportWriter:
    """Collect every nodule's finding during an evaluator run; write the report when it completes:
    ``report.json``, ``report.csv`` and, per scan, ``report.html``, ``nodules.png`` (montage) and
    ``nodule_labels.nii.gz`` (the masks on the scan's grid), each atomically. A run over several
    scans puts each scan's pictures in ``<output_dir>/<seriesuid>/``.

    Args:
        output_dir: where the report goes.
        model_version: the bundle version recorded in the report.
        image, seriesuid: the scan examined, reported with no nodules when none was found in it.
        min_nodule_probability: false-positive reduction: a *detected* candidate whose nodule
            probability is lower goes to the scan's ``rejected_candidates``, not its ``nodules``.
            Nodules given by a list are always reported.
        include_phi: put the patient's name, id, birth date, sex, study date and accession number
            (from DICOM headers) in the report; off by default.
        crop_key: the items' nodule crops (:class:`~nodule_bundle.measuring.transforms.NoduleMeasured`) that
            the pictures and label map are made from; nodules without one are in the table only.
        dicom_objects: for a scan read from a DICOM series, also write the masks as a DICOM SEG and
            the findings as a DICOM SR beside them (:mod:`nodule_bundle.reports.dicom`); for a scan
            without nodules, the SR alone, which says so.
    """

    def __init__(
        self,
        output_dir: str | Path,
        model_version: str | None = None,
        image: str | None = None,
        seriesuid: str | None = None,
        min_nodule_probability: float = 0.5,
        include_phi: bool = False,
        crop_key: str = "measurement_crop",
        dicom_objects: bool = True,
    ):
        self.output_dir, self.model_version = Path(output_dir), model_version
        self.image, self.seriesuid, self.min_nodule_probability = image, seriesuid, min_nodule_probability
        self.include_phi, self.crop_key = require_yes_no(include_phi, "include_phi"), crop_key
        self.dicom_objects = require_yes_no(dicom_objects, "dicom_objects")
        self._scans: dict[str, dict] = {}
        self._crops: dict[str, dict[str, torch.Tensor]] = {}
        self._meta: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._scans.clear()
        self._crops.clear()
        self._meta.clear()

    def _collect(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            meta = item["image"].meta
            uid = str(item.get("seriesuid") or Path(str(meta["filename_or_obj"])).name)
            if uid not in self._scans:
                self._scans[uid] = {**scan_identity(uid, meta, self.include_phi), "nodules": []}
                self._meta[uid] = {k: meta[k] for k in ("original_affine", "spatial_shape", "space", "series_uid", "filename_or_obj") if k in meta}
            finding = nodule_finding(item, output)
            if is_rejected_candidate(finding, self.min_nodule_probability):
                self._scans[uid].setdefault("rejected_candidates", []).append(finding)
            else:
                self._scans[uid]["nodules"].append(finding)
                if self.crop_key in item:
                    self._crops.setdefault(uid, {})[finding["nodule_id"]] = item[self.crop_key]

    def _write(self, engine: Engine) -> None:
        if not self._scans and self.image is not None:  # a scan without nodules is a finding too
            uid = self.seriesuid or scan_stem(Path(self.image))
            self._scans[uid] = {"seriesuid": uid, "image": Path(self.image).name, "nodules": []}
            if Path(self.image).is_dir():  # a DICOM series: its SR says so too
                self._meta[uid] = {"filename_or_obj": str(self.image), "series_uid": self.seriesuid}
        scans = list(self._scans.values())
        for scan in scans:  # the value each nodule has in the label map
            with_crop = [n for n in scan["nodules"] if n["nodule_id"] in self._crops.get(scan["seriesuid"], {})]
            for value, nodule in enumerate(with_crop, start=1):
                nodule["label_value"] = value
        write_report(self.output_dir, scans, self.model_version)
        model = {"name": BUNDLE_NAME, "version": self.model_version}
        for scan in scans:
            folder = self.output_dir if len(scans) == 1 else self.output_dir / scan["seriesuid"]
            meta = self._meta.get(scan["seriesuid"], {})
            write_scan_pictures(folder, scan, self._crops.get(scan["seriesuid"], {}), meta, model)
            if self.dicom_objects and "series_uid" in meta:
                write_dicom_report(folder, scan, meta["filename_or_obj"], meta["series_uid"], model)


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


class CheckpointError(NoduleBundleError):
    """Weights that cannot be loaded into the bundle's network."""


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (a ``weights_only`` load) whose failures name the file and what is
    wrong with it: missing, not a readable weights-only checkpoint (corrupt, truncated, or pickled
    code), or the weights of another network. In an exported bundle, whose ``large_files.yml``
    lists the file, its sha256 is checked before anything is unpickled.

    Args:
        large_files: path of the bundle's ``large_files.yml`` (absent in a source checkout: no check).
        load_path, load_dict, kwargs: as for :class:`monai.handlers.CheckpointLoader`.
    """

    def __init__(self, load_path: str, load_dict: dict, large_files: str | Path | None = None, **kwargs):
        super().__init__(load_path, load_dict, **kwargs)
        self.large_files = Path(large_files) if large_files else None

    def __call__(self, engine: Engine) -> None:
        path = Path(self.load_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found (train first, or pass the weights' path)")
        expected = listed_sha256(self.large_files, path) if self.large_files and self.large_files.is_file() else None
        if expected is not None and sha256_file(path) != expected:
            raise CheckpointError(f"{path}: sha256 differs from {self.large_files}: damaged or replaced weights, not loaded")
        try:
            super().__call__(engine)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            if "state_dict" in str(err) or "size mismatch" in str(err):
                raise CheckpointError(f"{path}: weights of another network: they do not fit this bundle's network ({first})") from None
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint of weights only (corrupt, truncated or holding code?): {first}") from None


def resume_checkpoint(folder: str | Path) -> str:
    """The newest training-state checkpoint (``checkpoint_epoch=N.pt``) in ``folder``, to ``--resume`` from."""
    import re

    found = {int(m.group(1)): p for p in Path(folder).glob("*.pt") if (m := re.search(r"epoch=(\d+)\.pt$", p.name))}
    if not found:
        raise CheckpointError(f"{folder}: nothing to resume from (no checkpoint_epoch=N.pt; a training run writes one per epoch)")
    return str(found[max(found)])
