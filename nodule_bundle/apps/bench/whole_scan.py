"""``bench whole-scan``: the no-list inference path stage by stage (read, lung mask, candidates, measurement, crops, network), medians over repeats."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from monai.data import MetaTensor

from nodule_bundle.apps.bench.timing import default_network, phantom_scan, summary
from nodule_bundle.reading.load import LoadCTImaged


def bench_whole_scan(shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 3, spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20) -> dict:
    """Time the whole-scan path stage by stage on a phantom scan of ``shape`` voxels with ``nodules``
    nodules: read (NIfTI), lung mask, candidates, measurement, crops + preprocessing, network (flip
    averaging, the shipped architecture with untrained weights: the cost is the same)."""
    from nodule_bundle.detection.candidates import detect_candidates, lung_mask
    from nodule_bundle.measuring.transforms import NoduleMeasured
    from nodule_bundle.network.inferers import FlipAveragingInferer
    from nodule_bundle.preprocessing.transforms import CTPreprocessd, NoduleCropd

    load = LoadCTImaged("image", ensure_channel_first=True, image_only=True)
    measure, crop = NoduleMeasured("image"), NoduleCropd("image", patch_size=40, spacing_mm=1.2)
    preprocess = CTPreprocessd("image", denoise_sigma_mm=0.5)
    network, inferer = default_network(), FlipAveragingInferer()
    stages: dict[str, list[float]] = {name: [] for name in ("read", "lung_mask", "candidates", "measure", "crop_preprocess", "network")}
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        path = Path(tmp) / "scan.nii.gz"
        phantom_scan(path, shape, spacing_mm, nodules)
        for run in range(repeats + 1):  # the first run warms ITK's and torch's lazy initialisation
            times, t = {}, time.perf_counter()
            image: MetaTensor = load({"image": str(path)})["image"]
            times["read"], t = time.perf_counter() - t, time.perf_counter()
            mask = lung_mask(image)
            times["lung_mask"], t = time.perf_counter() - t, time.perf_counter()
            found = detect_candidates(image, mask=mask, min_score=40.0)
            times["candidates"], t = time.perf_counter() - t, time.perf_counter()
            item = measure({"image": image, "center_world_mm": [c.center_world_mm for c in found]})
            times["measure"], t = time.perf_counter() - t, time.perf_counter()
            patches = torch.stack([preprocess(sample)["image"] for sample in crop(item)]) if found else torch.zeros(0, 1, 40, 40, 40)
            times["crop_preprocess"], t = time.perf_counter() - t, time.perf_counter()
            with torch.no_grad():
                for batch in patches.split(32):
                    inferer(batch, network)
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
