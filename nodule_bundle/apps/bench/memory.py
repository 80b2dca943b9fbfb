"""``bench memory``: peak resident memory of a real inference process beside one that only imports."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from nodule_bundle.apps.bench.timing import phantom_scan


def bench_memory(shape: tuple[int, int, int] = (512, 512, 300), spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20) -> dict:
    """Peak resident memory of ``python -m monai.bundle run`` with ``configs/inference.json`` on one
    phantom scan with its nodule list (a fresh process; the untrained network costs the same), beside
    a process that only imports the bundle's modules (the interpreter, torch and MONAI: the floor)."""
    import subprocess
    import sys

    from nodule_bundle.apps.workflow import find_bundle_root
    from nodule_bundle.data.nodule_csv import write_nodule_csv
    from nodule_bundle.network.networks import MultiTaskNoduleNet

    def peak_mb(command: list[str]) -> float:
        """The command's peak RSS, through a small fresh parent (a forked child would start with ours)."""
        probe = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        out = subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True, cwd=find_bundle_root())
        return int(out.stdout.split()[-1]) / 1024.0  # kB on Linux

    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        path = Path(tmp) / "scan.nii.gz"
        scan = phantom_scan(path, shape, spacing_mm, nodules)
        csv_path, weights = Path(tmp) / "nodules.csv", Path(tmp) / "model.pt"
        write_nodule_csv(csv_path, [pn.nodule for pn in scan.nodules])
        torch.save(MultiTaskNoduleNet().state_dict(), weights)
        floor = peak_mb([sys.executable, "-c", "import monai, torch, nodule_bundle.preprocessing.transforms, nodule_bundle.evaluation.handlers"])
        inference = peak_mb([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json",
                             "--image", str(path), "--nodules", str(csv_path), "--ckpt_path", str(weights), "--output_dir", str(Path(tmp) / "out")])  # fmt: skip
    return {"benchmark": "memory", "shape": list(shape), "nodules": len(scan.nodules), "peak_rss_mb_inference": inference, "peak_rss_mb_imports": floor}


def format_memory_result(result: dict) -> str:
    return (f"peak resident memory, inference on a {'x'.join(map(str, result['shape']))} scan with {result['nodules']} nodules: "
            f"{result['peak_rss_mb_inference']:.0f} MB (imports alone {result['peak_rss_mb_imports']:.0f} MB)")  # fmt: skip
