"""The bundle's inference for interactive use (MONAI Label): built once, answering click after click.

:class:`NoduleService` parses the bundle's own ``configs/inference.json`` once (preprocessing,
network, inferer, post-processing: no second copy of the pipeline), keeps the last scan it read in
memory (clicks on one study come in a row), reloads the weights when their file changes (training
made new ones live), and answers with the report's findings plus a label map of the nodule masks on
the scan's own grid (label ``i + 1`` for finding ``i``, ready to overlay in 3D Slicer). Given a prior
scan of the patient, :meth:`NoduleService.follow_up` finds each clicked nodule on it and says how it
changed (:mod:`nodule_bundle.followup`).
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Compose
from monai.utils import SpaceKeys

from nodule_bundle.apps.sharing.network_checks import load_weights
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.geometry import voxel_to_world
from nodule_bundle.detection.transforms import DetectNodulesd
from nodule_bundle.followup.compare import change_row, finding_sizes
from nodule_bundle.followup.prior_nodule import prior_nodule_centre
from nodule_bundle.followup.registration import Registration, register
from nodule_bundle.measuring.transforms import NoduleMeasured
from nodule_bundle.network.networks import fold_batch_norm
from nodule_bundle.network.segmentation import load_learned_masks
from nodule_bundle.reading.image_index import scan_stem
from nodule_bundle.reading.load import LoadCTImaged
from nodule_bundle.reports.report import is_rejected_candidate, nodule_finding

LABEL_KEY = "nodule_label"


class PointOutsideImageError(NoduleBundleError):
    """A clicked point that is not a voxel of the image."""


def _voxel_points(image: str | os.PathLike, points_voxel) -> np.ndarray:
    """``points_voxel`` (``[[i, j, k], ...]`` or one ``[i, j, k]``) as an ``(N, 3)`` array, or an error
    that says what was wrong with it."""
    try:
        points = np.asarray(points_voxel, dtype=np.float64)
    except (TypeError, ValueError):
        points = None
    if points is not None and points.size == 0:
        raise PointOutsideImageError(f"{image}: no point given (foreground: [[i, j, k], ...])")
    if points is not None and points.shape == (3,):
        points = points[None]
    if points is None or points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise PointOutsideImageError(f"{image}: foreground must be voxel indices [[i, j, k], ...], got {str(points_voxel)[:80]}")
    return points


class NoduleService:
    """Classify clicked points, or every detected nodule, of one scan with the bundle's components.

    Args:
        bundle_root: folder with ``configs/`` (a checkout or an exported bundle).
        model_path: weights (default ``<bundle_root>/models/model.pt``); reloaded when the file changes.
        device: where the network runs.
    """

    def __init__(self, bundle_root: str | os.PathLike, model_path: str | os.PathLike | None = None, device: str = "cpu"):
        self.bundle_root = Path(bundle_root)
        self.model_path = Path(model_path) if model_path else self.bundle_root / "models" / "model.pt"
        parser = ConfigParser()
        parser.read_config(str(self.bundle_root / "configs" / "inference.json"))
        parser.read_meta(str(self.bundle_root / "configs" / "metadata.json"))
        parser["bundle_root"], parser["device"] = str(self.bundle_root), device
        self.config, self.device = parser, torch.device(device)
        steps = parser.get_parsed_content("preprocessing").transforms
        expected = (LoadCTImaged, DetectNodulesd, NoduleMeasured)
        if not all(isinstance(step, kind) for step, kind in zip(steps, expected)):
            names = ", ".join(kind.__name__ for kind in expected)
            raise NoduleBundleError(f"{self.bundle_root}: inference.json's preprocessing must start with {names}")
        load_learned_masks(parser)  # the measurement's learned segmentation, when the bundle has one
        self.load, self.detection, self.measure, self.rest = steps[0], steps[1], steps[2], Compose(steps[3:])
        self.measure.label_key = LABEL_KEY
        memory_format = torch.channels_last_3d if parser.get_parsed_content("channels_last") else torch.preserve_format
        self.network_as_trained = parser.get_parsed_content("network_def").to(self.device, memory_format=memory_format).eval()
        self.network: torch.nn.Module | None = None  # its copy with batch norms folded, as inference.json runs it
        self.inferer, self.postprocessing = parser.get_parsed_content("inferer"), parser.get_parsed_content("postprocessing")
        self.version = parser.get_parsed_content("_meta_#version")
        self._weights_stamp = None
        self._scans: OrderedDict[tuple, MetaTensor] = OrderedDict()  # the current study and its prior
        self._registrations: OrderedDict[tuple, Registration] = OrderedDict()
        self._lock = threading.Lock()

    def classify_points(self, image: str | os.PathLike, points_voxel: Sequence[Sequence[float]]) -> tuple[list[dict], MetaTensor]:
        """Findings for the nodules at ``points_voxel`` (``[i, j, k]`` voxel indices of ``image``, as 3D
        Slicer's IJK) and their label map."""
        with self._lock:
            ct = self._read(image)
            points = _voxel_points(image, points_voxel)
            shape = np.array(ct.shape[1:])
            outside = [p.tolist() for p in points if np.any(p < -0.5) or np.any(p > shape - 0.5)]
            if outside:
                raise PointOutsideImageError(f"{image}: point(s) {outside} outside the image (size {shape.tolist()} voxels)")
            item = {
                "center_world_mm": voxel_to_world(points, ct.affine, ct.meta.get("space", SpaceKeys.RAS)).tolist(),
                "nodule_id": [f"p{k + 1:02d}" for k in range(len(points))],
            }
            return self._run(ct, item)

    def detect(self, image: str | os.PathLike) -> tuple[list[dict], list[dict], MetaTensor, dict]:
        """Findings of the whole-scan path (detect, classify, reduce): the nodules, the rejected
        candidates, a label map of the nodules kept and what the search saw
        (:func:`~nodule_bundle.detection.transforms.detection_facts`: lung volume, candidates, a
        warning when the lung mask is empty or implausible)."""
        with self._lock:
            ct = self._read(image)
            found = self.detection({"image": ct})
            search = found.pop("detection")
            if not found["center_world_mm"]:
                return [], [], MetaTensor(torch.zeros((1, *ct.shape[1:]), dtype=torch.uint8), affine=ct.affine, meta=dict(ct.meta)), search
            findings, label = self._run(ct, {k: v for k, v in found.items() if k != "image"})
        threshold = float(self.config["min_nodule_probability"])
        kept = [f for f in findings if not is_rejected_candidate(f, threshold)]
        rejected = [f for f in findings if is_rejected_candidate(f, threshold)]
        for f in rejected:
            label[label == f.pop("label_value")] = 0
        return kept, rejected, label, search

    def follow_up(self, image: str | os.PathLike, findings: Sequence[dict], prior_image: str | os.PathLike, days: int | None) -> dict:
        """How each of ``findings`` (of :meth:`classify_points` on ``image``) changed since ``prior_image``,
        a scan of the same patient ``days`` earlier (``None``: unknown, no doubling time): the prior
        registered to the current scan (:func:`~nodule_bundle.followup.registration.register`, which
        refuses a pair that cannot be one patient's chest), each nodule looked for on the prior
        where the registration carries it (:func:`~nodule_bundle.followup.prior_nodule.prior_nodule_centre`)
        and measured and classified there (none there: nothing denser than lung, or, where the detector
        found no candidate, what is there the network finds unlikely to be a nodule), and the change
        (:func:`~nodule_bundle.followup.compare.change_row`: status, diameter and volume change, VDT,
        Lung-RADS with the prior). Returns ``{"registration": {...}, "nodules": [one row per finding,
        with the prior nodule's sizes or null]}``."""
        with self._lock:
            prior, current = self._read(prior_image), self._read(image)
            key = (self._key(prior_image), self._key(image))
            if key not in self._registrations:
                self._registrations[key] = register(prior, current, str(prior_image), str(image))
                while len(self._registrations) > 4:
                    self._registrations.popitem(last=False)
            registration = self._registrations[key]
            carried = registration.current_to_prior(np.array([f["center_world_mm"] for f in findings], dtype=np.float64).reshape(-1, 3))
            places = [prior_nodule_centre(prior, point, self.detection.candidates) for point in carried]
            found = [k for k, place in enumerate(places) if place is not None]
            before: dict[int, dict] = {}
            if found:
                item = {"center_world_mm": [places[k][0].tolist() for k in found], "nodule_id": [f"prior-{findings[k]['nodule_id']}" for k in found]}
                threshold = float(self.config["min_nodule_probability"])
                before = {k: f for k, f in zip(found, self._run(prior, item)[0])
                          if f.get("measured_volume_mm3") and (places[k][1] or f["nodule_probability"] >= threshold)}  # fmt: skip
        rows = []
        for k, finding in enumerate(findings):
            then = finding_sizes(before[k]) if k in before else None
            distance = float(np.linalg.norm(np.asarray(then["center_world_mm"]) - carried[k])) if then else None
            rows.append({**change_row(then, finding_sizes(finding), days), "distance_mm": None if distance is None else round(distance, 1), "prior": then})
        summary = {"lung_dice": round(registration.lung_dice, 3), "scale": [round(v, 3) for v in registration.scale],
                   "vessel_correlation": round(registration.vessel_correlation, 3)}  # fmt: skip
        return {"registration": summary, "nodules": rows}

    @staticmethod
    def _key(image: str | os.PathLike) -> tuple[str, int]:
        path = Path(image)
        if not path.exists():
            raise NoduleBundleError(f"{path}: image not found")
        return str(path.resolve()), path.stat().st_mtime_ns

    def _read(self, image: str | os.PathLike) -> MetaTensor:
        """The scan as LoadCTImaged reads it; the last two are kept while their files are unchanged."""
        key = self._key(image)
        if key not in self._scans:
            self._scans[key] = self.load({"image": str(image)})["image"]
            while len(self._scans) > 2:
                self._scans.popitem(last=False)
        self._scans.move_to_end(key)
        return self._scans[key]

    def _run(self, ct: MetaTensor, item: dict) -> tuple[list[dict], MetaTensor]:
        self._reload_weights_if_changed()
        seriesuid = ct.meta.get("series_uid") or scan_stem(Path(str(ct.meta.get("filename_or_obj", "scan"))))
        measured = self.measure({"image": ct, "seriesuid": seriesuid, **item})
        label = measured.pop(LABEL_KEY)
        samples = self.rest(measured)
        batch = list_data_collate(samples)
        with torch.no_grad():
            batch["pred"] = self.inferer(torch.as_tensor(batch["image"]).as_subclass(torch.Tensor).to(self.device), self.network).cpu()
        outputs = [self.postprocessing(d) for d in decollate_batch(batch)]
        findings = [{**nodule_finding(s, o), "label_value": k + 1} for k, (s, o) in enumerate(zip(samples, outputs))]
        return findings, label

    def _reload_weights_if_changed(self) -> None:
        if not self.model_path.is_file():
            raise NoduleBundleError(f"{self.model_path}: model weights not found (train first)")
        stamp = (self.model_path.stat().st_mtime_ns, self.model_path.stat().st_size)
        if stamp != self._weights_stamp:
            self.network_as_trained.load_state_dict(load_weights(self.model_path), strict=True)
            self.network, self._weights_stamp = fold_batch_norm(copy.deepcopy(self.network_as_trained)), stamp
