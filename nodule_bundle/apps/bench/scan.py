"""``bench scan``: scan to report for given nodules, stage by stage, against the floor (the file's decompression alone), nibabel's read and a whole-volume MONAI pipeline."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from isal import igzip
from monai.transforms import LoadImaged

from nodule_bundle.apps.bench.timing import inference_config, inference_network, inference_steps, phantom_scan, summary
from nodule_bundle.measuring.measure import MEASUREMENT_KEYS


def bench_scan_to_report(shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 3, spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20) -> dict:
    """Scan-to-report with given nodule coordinates, stage by stage (read, measure, crop + resample,
    preprocess, network, report: JSON, CSV, HTML, montage and label map), against baselines on the
    same file in the same run: the floor, the file's decompression alone (ISA-L, as our reader
    decompresses: no reader can do less); nibabel's plain read as a second reference; and the
    straightforward MONAI pipeline (MONAI's stock ``LoadImaged``,
    then ``Orientation`` + ``Spacing`` resampling the whole volume to each isotropic spacing the
    crops need, 0.6 mm for the measurement and 1.2 mm for the network's patches, before cropping; the
    same measurement, network and report; its runs follow ours). Also the largest difference
    between the two pipelines' normalised patches, each nodule centre moved (less than half a patch
    voxel) onto the resampled volume's grid so that both sample the scan at the same points."""
    import nibabel as nib
    from monai.transforms import Orientation, Spacing

    from nodule_bundle.core.geometry import voxel_to_world, world_to_voxel
    from nodule_bundle.preprocessing.transforms import NoduleCrop
    from nodule_bundle.reports.report import nodule_finding, scan_identity, write_report, write_scan_pictures

    parser = inference_config()  # the bundle's own pipeline: its transforms, inferer, heads and network
    steps, network, inferer, heads = inference_steps(parser), inference_network(parser), parser.get_parsed_content("inferer"), parser.get_parsed_content("postprocessing")
    load, measure, crop, preprocess = steps["read"], steps["measure"], steps["crop"], steps["preprocess"]
    load_stock = LoadImaged("image", ensure_channel_first=True, image_only=True)  # MONAI's stock loader (float32), for the baseline

    def report(folder: Path, uid: str, image, samples: list[dict], preds: torch.Tensor) -> None:
        findings = [nodule_finding(s, heads({"pred": p})) | {"label_value": k + 1} for k, (s, p) in enumerate(zip(samples, preds))]
        scan_entry = {**scan_identity(uid, image.meta), "nodules": findings}
        write_report(folder, [scan_entry], None)
        crops = {f["nodule_id"]: s["measurement_crop"] for f, s in zip(findings, samples)}
        write_scan_pictures(folder, scan_entry, crops, image.meta, {"name": "bench", "version": None})

    whole_volume_crop = NoduleCrop(crop.cropper.patch_size, crop.cropper.spacing_mm)  # on the resampled volume: the same patch grid

    def resample_whole(image, spacing_mm: float = whole_volume_crop.spacing_mm):
        return Spacing(pixdim=(spacing_mm,) * 3, mode="bilinear")(Orientation(axcodes="RAS")(image))

    stages: dict[str, list[float]] = {name: [] for name in ("read", "measure", "crop_resample", "preprocess", "network", "report")}
    nibabel_read, decompress, baseline = [], [], []
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        path = Path(tmp) / "scan.nii.gz"
        scan = phantom_scan(path, shape, spacing_mm, nodules)
        # each centre moved (< 0.6 mm) so that its patch's voxels fall on the resampled volume's grid: both
        # pipelines then interpolate the scan at the same points, and the difference is theirs, not a second
        # interpolation of the whole-volume patch
        grid = resample_whole(load_stock({"image": str(path)})["image"])
        half = (whole_volume_crop.patch_size - 1) / 2.0
        centres = [voxel_to_world(np.rint(world_to_voxel(pn.nodule.center_world_mm, grid.affine) - half) + half, grid.affine).tolist()
                   for pn in scan.nodules]  # fmt: skip
        del grid
        for run in range(repeats + 1):  # the first run warms lazy initialisation
            t = time.perf_counter()
            np.asanyarray(nib.load(path).dataobj)
            nibabel_s, t = time.perf_counter() - t, time.perf_counter()
            with igzip.open(path) as file:
                file.read()
            decompress_s = time.perf_counter() - t
            times, t = {}, time.perf_counter()
            item = load({"image": str(path), "seriesuid": scan.seriesuid, "center_world_mm": centres, "nodule_id": [f"n{k}" for k in range(len(centres))]})
            times["read"], t = time.perf_counter() - t, time.perf_counter()
            item = measure(item)
            times["measure"], t = time.perf_counter() - t, time.perf_counter()
            samples = crop(item)
            times["crop_resample"], t = time.perf_counter() - t, time.perf_counter()
            samples = [preprocess(s) for s in samples]
            times["preprocess"], t = time.perf_counter() - t, time.perf_counter()
            with torch.no_grad():
                preds = inferer(torch.stack([torch.as_tensor(s["image"]).as_subclass(torch.Tensor) for s in samples]), network)
            times["network"], t = time.perf_counter() - t, time.perf_counter()
            report(Path(tmp) / "report", scan.seriesuid, item["image"], samples, preds)
            times["report"] = time.perf_counter() - t
            if run:
                nibabel_read.append(nibabel_s)
                decompress.append(decompress_s)
                for name, seconds in times.items():
                    stages[name].append(seconds)
        # the baseline's runs after ours: its 0.6 mm volume (3 GB of temporaries) would otherwise
        # slow the runs that follow it, ours and the references'
        for run in range(repeats + 1):
            t = time.perf_counter()
            stock = load_stock({"image": str(path)})["image"]
            baseline_item = measure({"image": resample_whole(stock, measure.spacing_mm), "center_world_mm": centres, "nodule_id": item["nodule_id"]})
            resampled = resample_whole(stock)
            reference = [preprocess({"image": whole_volume_crop(resampled, c)})["image"] for c in centres]
            with torch.no_grad():
                reference_preds = inferer(torch.stack([torch.as_tensor(r).as_subclass(torch.Tensor) for r in reference]), network)
            own = [{**sample, **{key: baseline_item[key][k] for key in (*MEASUREMENT_KEYS, "measurement_crop")}} for k, sample in enumerate(samples)]
            report(Path(tmp) / "report_whole_volume", scan.seriesuid, stock, own, reference_preds)
            if run:
                baseline.append(time.perf_counter() - t)
            del stock, baseline_item, resampled
    difference = max(float((torch.as_tensor(r) - torch.as_tensor(s["image"])).abs().max()) for r, s in zip(reference, samples))
    totals = [sum(values) for values in zip(*stages.values())]
    total, baseline_m = statistics.median(totals), statistics.median(baseline)
    return {
        "benchmark": "scan_to_report",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "nodules": len(centres),
        "stages": {name: summary(values) for name, values in stages.items()},
        "total": summary(totals),
        "decompression_floor": summary(decompress),
        "nibabel_read": summary(nibabel_read),
        "whole_volume_baseline": summary(baseline),
        "ratio_to_decompression_floor": total / statistics.median(decompress),
        "ratio_to_nibabel_read": total / statistics.median(nibabel_read),
        "speedup_over_whole_volume": baseline_m / total,
        "max_patch_difference": difference,
    }


def format_scan_to_report_result(result: dict) -> str:
    lines = [f"scan to report, {'x'.join(map(str, result['shape']))}, {result['nodules']} given nodules: median seconds over {result['total']['runs']} runs"]
    for name, t in [*result["stages"].items(), ("total", result["total"]), ("floor: decompression", result["decompression_floor"]),
                    ("nibabel read", result["nibabel_read"]), ("whole-volume MONAI", result["whole_volume_baseline"])]:  # fmt: skip
        lines.append(f"  {name:<20} {t['median_s']:7.2f} s  (min {t['min_s']:.2f}, max {t['max_s']:.2f})")
    lines.append(f"  {result['ratio_to_decompression_floor']:.2f}x the floor (the file's decompression alone; {result['ratio_to_nibabel_read']:.2f}x nibabel's read);"
                 f" {result['speedup_over_whole_volume']:.1f}x faster than whole-volume resampling;"
                 f" patches differ by at most {result['max_patch_difference']:.3f} (normalised)")  # fmt: skip
    return "\n".join(lines)
