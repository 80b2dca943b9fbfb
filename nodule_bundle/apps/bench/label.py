"""``bench label``: a real MONAI Label server's point-prompt answers beside its HTTP floor."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from nodule_bundle.apps.bench.timing import phantom_scan, summary


def click(url: str, image: str, point: list[int]) -> tuple[int, float]:
    """One point prompt (``POST /infer/<model>?image=...``): its HTTP status and seconds to the whole answer."""
    from nodule_bundle.apps.label_app.server import MODEL

    body = urllib.parse.urlencode({"params": json.dumps({"foreground": [point]})}).encode()
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{url}/infer/{MODEL}?image={urllib.parse.quote(image)}&output=json", data=body, timeout=600) as response:
            json.load(response)
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - start


def _latency(seconds: list[float]) -> dict:
    """Median and 95th percentile of answer times (of one answer: that one)."""
    p95 = statistics.quantiles(seconds, n=20, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    return {"p50_s": statistics.median(seconds), "p95_s": p95, "runs": len(seconds)}


def point_prompt_load(url: str, image: str, point: list[int], sequential: int = 200, concurrent: int = 20) -> dict:
    """``sequential`` point prompts one after another, then ``concurrent`` at once (as many threads): the
    statuses of each phase and their latency (p50, p95)."""
    one_by_one = [click(url, image, point) for _ in range(sequential)]
    with ThreadPoolExecutor(concurrent) as pool:
        at_once = list(pool.map(lambda _: click(url, image, point), range(concurrent)))
    return {
        phase: {"statuses": [status for status, _ in answers], **_latency([seconds for _, seconds in answers])}
        for phase, answers in (("sequential", one_by_one), ("concurrent", at_once))
    }


def bench_label(venv: str | Path, shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 5, spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20,
                load: tuple[int, int] | None = None) -> dict:  # fmt: skip
    """Point-prompt answers of a real MONAI Label server (``venv``: its environment) on a phantom study
    of ``shape`` voxels: the first request (reads the study, warms up), then ``repeats`` clicks on
    other nodules; beside them, the HTTP floor (``GET /info/``) measured in the same run. With
    ``load`` (sequential, concurrent), also :func:`point_prompt_load` on one nodule."""
    from nodule_bundle.apps.label_app.server import start_server, stop_server
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

        def info() -> float:
            start = time.perf_counter()
            with urllib.request.urlopen(f"{url}/info/", timeout=60) as response:
                json.load(response)
            return time.perf_counter() - start

        try:
            first = click(url, "study", points[0])[1]
            clicks = [click(url, "study", points[(k + 1) % len(points)])[1] for k in range(repeats)]
            floor = [info() for _ in range(repeats)]
            under_load = point_prompt_load(url, "study", points[0], *load) if load else None
        finally:
            stop_server(proc)
    return {
        "benchmark": "label_point_prompt",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "first_request_s": first,
        "point_prompt": summary(clicks),
        "http_floor_info": summary(floor),
        **({"load": under_load} if under_load else {}),
    }


def format_label_result(result: dict) -> str:
    prompt, floor = result["point_prompt"], result["http_floor_info"]
    lines = [
        f"MONAI Label point prompt on a {'x'.join(map(str, result['shape']))} study, {prompt['runs']} clicks after the first",
        f"  first request    {result['first_request_s']:7.2f} s  (reads the study, warms up)",
        f"  point prompt     {prompt['median_s']:7.2f} s  median (min {prompt['min_s']:.2f}, max {prompt['max_s']:.2f})",
        f"  HTTP floor       {floor['median_s']:7.3f} s  median of GET /info/",
    ]  # fmt: skip
    for phase, load in result.get("load", {}).items():
        errors = sum(status != 200 for status in load["statuses"])
        lines.append(f"  load, {phase:10s} {load['runs']:4d} clicks: p50 {load['p50_s']:.2f} s, p95 {load['p95_s']:.2f} s, {errors} error(s)")
    return "\n".join(lines)
