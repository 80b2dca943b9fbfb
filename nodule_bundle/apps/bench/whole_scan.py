"""``bench whole-scan``: the no-list inference path of ``configs/inference.json`` stage by stage (read, lung mask, candidates, measurement, crops, network), medians over repeats."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from nodule_bundle.apps.bench.timing import inference_config, inference_network, inference_steps, phantom_scan, summary
from nodule_bundle.evaluation.engine import collate_nodules


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
        phantom_scan(path, shape, spacing_mm, nodules)
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
    totals = [sum(values) for values in zip(*stages.values())]
    return {
        "benchmark": "whole_scan",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "nodules": nodules,
        "candidates": len(found),
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
    return "\n".join(lines)
