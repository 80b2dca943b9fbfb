"""Shared by the benchmarks: timing candidates in turn (medians, spread), a phantom scan on disk, the network as inference runs it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def summary(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": len(seconds)}


def phantom_scan(path: Path, shape: tuple[int, int, int], spacing_mm, nodules: int):
    """A phantom scan of ``shape`` voxels at ``spacing_mm`` with ``nodules`` nodules, written as NIfTI to ``path``."""
    from nodule_bundle.data.phantom import PhantomConfig, make_scan
    from nodule_bundle.data.writers import write_nifti

    fov = tuple(float(n * s) for n, s in zip(shape, spacing_mm))
    cfg = PhantomConfig(fov_mm=fov, inplane_spacing_mm=(spacing_mm[0], spacing_mm[0]), slice_thicknesses_mm=(spacing_mm[2],), nodules_per_scan=(nodules, nodules))
    scan = make_scan(0, 0, cfg)
    write_nifti(path, scan.volume_hu, scan.affine_lps)
    return scan


def as_inference_runs_it(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` as inference.json runs it: eval mode, batch norms folded, ``channels_last_3d``."""
    from nodule_bundle.network.networks import fold_batch_norm

    return fold_batch_norm(network.eval()).to(memory_format=torch.channels_last_3d)


def default_network() -> torch.nn.Module:
    """The default network as inference.json runs it, with untrained weights: the cost is the same."""
    from nodule_bundle.network.networks import MultiTaskNoduleNet

    return as_inference_runs_it(MultiTaskNoduleNet())


def time_alternating(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Run every candidate once to warm caches, then ``repeats`` rounds in turn; seconds per candidate."""
    for run in candidates.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: summary(values) for name, values in seconds.items()}
