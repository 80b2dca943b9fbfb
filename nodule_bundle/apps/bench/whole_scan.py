"""``bench whole-scan``: the no-list inference path of ``configs/inference.json`` stage by stage
(read, lung mask, candidates, measurement, crops, network), medians over repeats; beside it, the
candidates found with ITK's ``LaplacianRecursiveGaussianImageFilter`` as the LoG (the reference
the detector's own LoG must match): its time, its candidates and the scan's nodules each finds."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import itk
import numpy as np
import torch

from nodule_bundle.apps.bench.timing import inference_config, inference_network, inference_steps, phantom_scan, summary
from nodule_bundle.detection.candidates import Candidate, detect_candidates
from nodule_bundle.detection.froc import hit_matrix
from nodule_bundle.evaluation.engine import collate_nodules


def recursive_log_response(image: itk.Image, sigma_mm: float, spacing_mm: float) -> np.ndarray:
    """The reference scale-normalised -LoG: ITK's ``LaplacianRecursiveGaussianImageFilter`` (the
    detector's LoG up to 0.21.0)."""
    log = itk.LaplacianRecursiveGaussianImageFilter.New(image, Sigma=sigma_mm, NormalizeAcrossScale=True)
    log.Update()
    return -itk.array_from_image(log.GetOutput())


def _agreement(found: list[Candidate], reference: list[Candidate], nodules) -> dict:
    """How many of ``reference``'s candidates ``found`` has within 1 mm, and how many of the scan's
    ``nodules`` each hits (a centre within the nodule's radius)."""
    def centres(cands):
        return np.array([c.center_world_mm for c in cands]).reshape(-1, 3)

    gap = np.linalg.norm(centres(reference)[:, None] - centres(found)[None], axis=-1)
    nodules_mm, radii = [n.nodule.center_world_mm for n in nodules], [n.nodule.diameter_mm / 2 for n in nodules]
    return {
        "reference_candidates": len(reference),
        "reference_found_within_1mm": int((gap <= 1.0).any(axis=1).sum()),
        "nodules": len(nodules),
        "nodules_hit": int(hit_matrix(centres(found), nodules_mm, radii).any(axis=0).sum()),
        "nodules_hit_by_reference": int(hit_matrix(centres(reference), nodules_mm, radii).any(axis=0).sum()),
    }


def bench_whole_scan(shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 3, spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20) -> dict:
    """Time the whole-scan path stage by stage on a phantom scan of ``shape`` voxels with ``nodules``
    nodules, with the transforms, inferer and network of the bundle's ``configs/inference.json``
    (parsed once; the network with untrained weights: the cost is the same): read, lung mask,
    candidates (the two halves of its detection transform), measurement, crops + preprocessing, network."""
    parser = inference_config()
    steps, network, inferer = inference_steps(parser), inference_network(parser), parser.get_parsed_content("inferer")
    stages: dict[str, list[float]] = {name: [] for name in ("read", "lung_mask", "candidates", "measure", "crop_preprocess", "network")}
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        path = Path(tmp) / "scan.nii.gz"
        scan = phantom_scan(path, shape, spacing_mm, nodules)
        for run in range(repeats + 1):  # the first run warms ITK's and torch's lazy initialisation
            times, t = {}, time.perf_counter()
            item = steps["read"]({"image": str(path)})
            times["read"], t = time.perf_counter() - t, time.perf_counter()
            mask = steps["detect"].lung_mask(item["image"])
            times["lung_mask"], t = time.perf_counter() - t, time.perf_counter()
            found = steps["detect"].candidates(item["image"], mask)
            times["candidates"], t = time.perf_counter() - t, time.perf_counter()
            item = steps["measure"](steps["detect"].with_candidates(item, found, mask))
            times["measure"], t = time.perf_counter() - t, time.perf_counter()
            samples = [steps["preprocess"](sample) for sample in steps["crop"](item)]
            times["crop_preprocess"], t = time.perf_counter() - t, time.perf_counter()
            batch = collate_nodules([samples])  # one scan's nodules, one batch: as the evaluator runs them
            with torch.no_grad():
                inferer(torch.as_tensor(batch["image"]).as_subclass(torch.Tensor), network) if samples else None
            times["network"] = time.perf_counter() - t
            if run:
                for name, seconds in times.items():
                    stages[name].append(seconds)
        detect = steps["detect"]
        recursive_log_response(itk.image_from_array(np.zeros((8, 8, 8), np.float32)), 1.0, 1.0)  # ITK's lazy load, not timed
        t = time.perf_counter()
        reference = detect_candidates(item["image"], detect.spacing_mm, min_score=detect.min_score, min_round_score=detect.min_round_score, mask=mask, response_at=recursive_log_response)
        reference_s = time.perf_counter() - t
    totals = [sum(values) for values in zip(*stages.values())]
    return {
        "benchmark": "whole_scan",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "nodules": nodules,
        "candidates": len(found),
        "reference_log": {"candidates_s": reference_s, **_agreement(found, reference, scan.nodules)},
        "stages": {name: summary(values) for name, values in stages.items()},
        "total": summary(totals),
    }


def format_whole_scan_result(result: dict) -> str:
    lines = [
        f"whole scan {'x'.join(map(str, result['shape']))}, {result['nodules']} nodules, {result['candidates']} candidates: "
        f"median seconds over {result['total']['runs']} runs"
    ]
    for name, t in [*result["stages"].items(), ("total", result["total"])]:
        lines.append(f"  {name:<16} {t['median_s']:7.2f} s  (min {t['min_s']:.2f}, max {t['max_s']:.2f})")
    ref, own = result["reference_log"], result["stages"]["candidates"]["median_s"]
    lines.append(f"candidates with ITK's LaplacianRecursiveGaussianImageFilter as the LoG (the reference): {ref['candidates_s']:.2f} s "
                 f"(the detector's LoG {ref['candidates_s'] / own:.2f}x faster); {ref['reference_candidates']} candidates, "
                 f"{ref['reference_found_within_1mm']} of them found within 1 mm; the scan's {ref['nodules']} nodules hit: "
                 f"{ref['nodules_hit']} (reference {ref['nodules_hit_by_reference']})")  # fmt: skip
    return "\n".join(lines)
