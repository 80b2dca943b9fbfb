"""``bench label``: a real MONAI Label server's point-prompt answers beside its HTTP floor."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nodule_bundle.apps.bench.timing import phantom_scan, summary


def bench_label(venv: str | Path, shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 5, spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20) -> dict:
    """Point-prompt answers of a real MONAI Label server (``venv``: its environment) on a phantom study
    of ``shape`` voxels: the first request (reads the study, warms up), then ``repeats`` clicks on
    other nodules; beside them, the HTTP floor (``GET /info/``) measured in the same run."""
    import json
    import urllib.parse
    import urllib.request

    from nodule_bundle.apps.label_app.server import MODEL, start_server, stop_server
    from nodule_bundle.apps.workflow import find_bundle_root
    from nodule_bundle.core.geometry import LPS_TO_RAS, world_to_voxel
    from nodule_bundle.network.networks import MultiTaskNoduleNet

    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        studies = Path(tmp) / "studies"
        studies.mkdir()
        scan = phantom_scan(studies / "study.nii.gz", shape, spacing_mm, nodules)
        points = [np.rint(world_to_voxel(pn.nodule.center_world_mm, LPS_TO_RAS @ scan.affine_lps)).astype(int).tolist() for pn in scan.nodules]
        torch.save(MultiTaskNoduleNet().state_dict(), Path(tmp) / "model.pt")  # untrained: the cost is the same
        proc, url = start_server(venv, studies, find_bundle_root(), Path(tmp) / "server.log", model_path=Path(tmp) / "model.pt")

        def click(point) -> float:
            body = urllib.parse.urlencode({"params": json.dumps({"foreground": [point]})}).encode()
            start = time.perf_counter()
            with urllib.request.urlopen(f"{url}/infer/{MODEL}?image=study&output=json", data=body, timeout=600) as response:
                json.load(response)
            return time.perf_counter() - start

        def info() -> float:
            start = time.perf_counter()
            with urllib.request.urlopen(f"{url}/info/", timeout=60) as response:
                json.load(response)
            return time.perf_counter() - start

        try:
            first = click(points[0])
            clicks = [click(points[(k + 1) % len(points)]) for k in range(repeats)]
            floor = [info() for _ in range(repeats)]
        finally:
            stop_server(proc)
    return {
        "benchmark": "label_point_prompt",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "first_request_s": first,
        "point_prompt": summary(clicks),
        "http_floor_info": summary(floor),
    }


def format_label_result(result: dict) -> str:
    click, floor = result["point_prompt"], result["http_floor_info"]
    return "\n".join([
        f"MONAI Label point prompt on a {'x'.join(map(str, result['shape']))} study, {click['runs']} clicks after the first",
        f"  first request    {result['first_request_s']:7.2f} s  (reads the study, warms up)",
        f"  point prompt     {click['median_s']:7.2f} s  median (min {click['min_s']:.2f}, max {click['max_s']:.2f})",
        f"  HTTP floor       {floor['median_s']:7.3f} s  median of GET /info/",
    ])  # fmt: skip
