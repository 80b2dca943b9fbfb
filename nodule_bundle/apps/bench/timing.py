"""Shared by the benchmarks: timing candidates in turn (medians, spread), a phantom scan on disk, and
the bundle's own inference pipeline (``configs/inference.json`` parsed once: its transforms by stage,
its network as inference runs it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.bundle import ConfigParser


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


def inference_config(bundle_root: str | Path | None = None, overrides: dict | None = None) -> ConfigParser:
    """The bundle's ``configs/inference.json`` parsed once, with those config ``overrides`` whose ids
    it has; the learned segmentation's weights loaded when the bundle has them."""
    from nodule_bundle.apps.workflow import find_bundle_root
    from nodule_bundle.network.segmentation import load_learned_masks

    root = find_bundle_root(bundle_root)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), **{k: v for k, v in (overrides or {}).items() if k.split("#")[0] in parser.config}})
    load_learned_masks(parser)
    return parser


def inference_steps(parser: ConfigParser) -> dict[str, Callable]:
    """The preprocessing transforms of a parsed ``inference.json`` by stage: ``read``, ``detect``,
    ``measure``, ``crop``, ``preprocess`` (an error names a stage the config lacks)."""
    from nodule_bundle.core.errors import NoduleBundleError
    from nodule_bundle.detection.transforms import DetectNodulesd
    from nodule_bundle.measuring.transforms import NoduleMeasured
    from nodule_bundle.preprocessing.transforms import CTPreprocessd, NoduleCropd
    from nodule_bundle.reading.load import LoadCTImaged

    kinds = {"read": LoadCTImaged, "detect": DetectNodulesd, "measure": NoduleMeasured, "crop": NoduleCropd, "preprocess": CTPreprocessd}
    transforms = parser.get_parsed_content("preprocessing").transforms
    steps = {name: next((t for t in transforms if isinstance(t, kind)), None) for name, kind in kinds.items()}
    missing = [kinds[name].__name__ for name, step in steps.items() if step is None]
    if missing:
        raise NoduleBundleError(f"inference.json's preprocessing has no {', '.join(missing)}")
    return steps  # type: ignore[return-value]


def inference_network(parser: ConfigParser) -> torch.nn.Module:
    """A parsed ``inference.json``'s network as its ``initialize`` leaves it (batch norms folded, its
    memory format), with untrained weights: the cost is the same."""
    from nodule_bundle.network.networks import fold_batch_norm

    network = parser.get_parsed_content("network")
    fold_batch_norm(parser.get_parsed_content("network_def").eval())
    return network


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
