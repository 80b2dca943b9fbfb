"""``nodule-bundle bench``: measurements against a baseline taken in the same run (medians, spread).

``whole-scan``: the no-list inference path stage by stage (read, lung mask, candidates, measurement,
crops, network), medians over repeats.

``read``: reading a DICOM CT series with the bundle's loader (pydicom header checks, then ITK/GDCM,
into MONAI's ``[x, y, z]`` float32 MetaTensor) against, on the same files, ITK's plain series reader
(``GDCMSeriesFileNames`` + ``ImageSeriesReader``, an ITK image: the floor) and MONAI's stock
``LoadImage(reader="ITKReader")`` on the directory (the same output as ours, without the checks).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import itk
import numpy as np
import torch
from isal import igzip
from monai.data import ITKReader, MetaTensor
from monai.transforms import LoadImage, LoadImaged

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.data.writers import write_dicom_series
from nodule_bundle.measuring.measure import MEASUREMENT_KEYS
from nodule_bundle.reading.load import LoadCTImaged


def _summary(seconds: list[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": len(seconds)}


def _phantom_scan(path: Path, shape: tuple[int, int, int], spacing_mm, nodules: int):
    """A phantom scan of ``shape`` voxels at ``spacing_mm`` with ``nodules`` nodules, written as NIfTI to ``path``."""
    from nodule_bundle.data.phantom import PhantomConfig, make_scan
    from nodule_bundle.data.writers import write_nifti

    fov = tuple(float(n * s) for n, s in zip(shape, spacing_mm))
    cfg = PhantomConfig(fov_mm=fov, inplane_spacing_mm=(spacing_mm[0], spacing_mm[0]), slice_thicknesses_mm=(spacing_mm[2],), nodules_per_scan=(nodules, nodules))
    scan = make_scan(0, 0, cfg)
    write_nifti(path, scan.volume_hu, scan.affine_lps)
    return scan


def _as_inference_runs_it(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` as inference.json runs it: eval mode, batch norms folded, ``channels_last_3d``."""
    from nodule_bundle.network.networks import fold_batch_norm

    return fold_batch_norm(network.eval()).to(memory_format=torch.channels_last_3d)


def _default_network() -> torch.nn.Module:
    """The default network as inference.json runs it, with untrained weights: the cost is the same."""
    from nodule_bundle.network.networks import MultiTaskNoduleNet

    return _as_inference_runs_it(MultiTaskNoduleNet())


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
    return {name: _summary(values) for name, values in seconds.items()}


def itk_plain_series_read(directory: Path):
    names = itk.GDCMSeriesFileNames.New(Directory=str(directory))
    return itk.imread(names.GetFileNames(names.GetSeriesUIDs()[0]))


def bench_dicom_read(shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 5, spacing_mm=(0.7, 0.7, 1.0)) -> dict:
    """Write a ``shape`` CT series to a temporary folder and time both readers on it."""
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1500, size=shape, dtype=np.int16)
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = [-180.0, -180.0, -300.0]
    load = LoadCTImaged("image", ensure_channel_first=True, image_only=True)
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        directory = Path(tmp) / "series"
        write_dicom_series(directory, volume, affine, "1.2.826.0.1.3680043.8.498.42")
        ours = load({"image": str(directory)})["image"]
        baseline = itk.array_view_from_image(itk_plain_series_read(directory))
        if not np.array_equal(ours[0].numpy().transpose(2, 1, 0), baseline):
            raise AssertionError("the two readers disagree on the voxels")  # a benchmark of wrong answers is void
        monai_stock = LoadImage(reader=ITKReader(), ensure_channel_first=True, image_only=True)
        times = time_alternating(
            {
                "itk_series_reader": lambda: itk_plain_series_read(directory),
                "monai_itkreader": lambda: monai_stock(str(directory)),
                "bundle_loader": lambda: load({"image": str(directory)}),
            },
            repeats,
        )
    return {
        "benchmark": "dicom_read",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "times": times,
        "ratio_bundle_to_itk": times["bundle_loader"]["median_s"] / times["itk_series_reader"]["median_s"],
        "ratio_bundle_to_monai_itkreader": times["bundle_loader"]["median_s"] / times["monai_itkreader"]["median_s"],
    }


def format_read_result(result: dict) -> str:
    lines = [f"DICOM series {'x'.join(map(str, result['shape']))}: median seconds over {result['times']['bundle_loader']['runs']} runs"]
    for name, t in result["times"].items():
        lines.append(f"  {name:<18} {t['median_s']:.3f} s  (min {t['min_s']:.3f}, max {t['max_s']:.3f})")
    lines.append(f"  ratio bundle / ITK series reader   {result['ratio_bundle_to_itk']:.2f}")
    lines.append(f"  ratio bundle / MONAI ITKReader     {result['ratio_bundle_to_monai_itkreader']:.2f}")
    return "\n".join(lines)




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
    network, inferer = _default_network(), FlipAveragingInferer()
    stages: dict[str, list[float]] = {name: [] for name in ("read", "lung_mask", "candidates", "measure", "crop_preprocess", "network")}
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        path = Path(tmp) / "scan.nii.gz"
        _phantom_scan(path, shape, spacing_mm, nodules)
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
        "stages": {name: _summary(values) for name, values in stages.items()},
        "total": _summary(totals),
    }


def format_whole_scan_result(result: dict) -> str:
    lines = [
        f"whole scan {'x'.join(map(str, result['shape']))}, {result['nodules']} nodules, {result['candidates']} candidates: "
        f"median seconds over {result['total']['runs']} runs"
    ]
    for name, t in [*result["stages"].items(), ("total", result["total"])]:
        lines.append(f"  {name:<16} {t['median_s']:7.2f} s  (min {t['min_s']:.2f}, max {t['max_s']:.2f})")
    return "\n".join(lines)


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
        scan = _phantom_scan(studies / "study.nii.gz", shape, spacing_mm, nodules)
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
        "point_prompt": _summary(clicks),
        "http_floor_info": _summary(floor),
    }


def format_label_result(result: dict) -> str:
    click, floor = result["point_prompt"], result["http_floor_info"]
    return "\n".join([
        f"MONAI Label point prompt on a {'x'.join(map(str, result['shape']))} study, {click['runs']} clicks after the first",
        f"  first request    {result['first_request_s']:7.2f} s  (reads the study, warms up)",
        f"  point prompt     {click['median_s']:7.2f} s  median (min {click['min_s']:.2f}, max {click['max_s']:.2f})",
        f"  HTTP floor       {floor['median_s']:7.3f} s  median of GET /info/",
    ])  # fmt: skip


def bench_scan_to_report(shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 3, spacing_mm=(0.7, 0.7, 1.0), nodules: int = 20) -> dict:
    """Scan-to-report with given nodule coordinates, stage by stage (read, measure, crop + resample,
    preprocess, network, report: JSON, CSV, HTML, montage and label map), against two baselines on the same file in the same run: the plain
    read (nibabel, the floor; beside it the file's decompression alone by ISA-L, as our reader
    decompresses) and the straightforward MONAI pipeline (MONAI's stock ``LoadImaged``,
    then ``Orientation`` + ``Spacing`` resampling the whole volume to each isotropic spacing the
    crops need, 0.6 mm for the measurement and 1.2 mm for the network's patches, before cropping; the
    same measurement, network and report; its runs follow ours). Also the largest difference
    between the two pipelines' normalised patches, each nodule centre moved (less than half a patch
    voxel) onto the resampled volume's grid so that both sample the scan at the same points."""
    import nibabel as nib
    from monai.transforms import Orientation, Spacing

    from nodule_bundle.core.geometry import voxel_to_world, world_to_voxel
    from nodule_bundle.measuring.transforms import NoduleMeasured
    from nodule_bundle.network.inferers import FlipAveragingInferer
    from nodule_bundle.network.targets import NoduleHeadsd
    from nodule_bundle.preprocessing.transforms import CTPreprocessd, NoduleCrop, NoduleCropd
    from nodule_bundle.reports.report import nodule_finding, scan_identity, write_report, write_scan_pictures

    load = LoadCTImaged("image", ensure_channel_first=True, image_only=True, dtype=None)  # as stored, like inference.json
    load_stock = LoadImaged("image", ensure_channel_first=True, image_only=True)  # MONAI's stock loader (float32), for the baseline
    measure = NoduleMeasured("image", crop_key="measurement_crop")
    crop = NoduleCropd("image", per_nodule_keys=("nodule_id", *MEASUREMENT_KEYS, "measurement_crop"), patch_size=40, spacing_mm=1.2)
    preprocess, heads = CTPreprocessd("image", denoise_sigma_mm=0.5), NoduleHeadsd()
    network, inferer = _default_network(), FlipAveragingInferer(keep_passes=True)

    def report(folder: Path, uid: str, image, samples: list[dict], preds: torch.Tensor) -> None:
        findings = [nodule_finding(s, heads({"pred": p})) | {"label_value": k + 1} for k, (s, p) in enumerate(zip(samples, preds))]
        scan_entry = {**scan_identity(uid, image.meta), "nodules": findings}
        write_report(folder, [scan_entry], None)
        crops = {f["nodule_id"]: s["measurement_crop"] for f, s in zip(findings, samples)}
        write_scan_pictures(folder, scan_entry, crops, image.meta, {"name": "bench", "version": None})

    whole_volume_crop = NoduleCrop(40, 1.2)  # on the resampled volume: the same patch grid, for the difference

    def resample_whole(image, spacing_mm: float = whole_volume_crop.spacing_mm):
        return Spacing(pixdim=(spacing_mm,) * 3, mode="bilinear")(Orientation(axcodes="RAS")(image))

    stages: dict[str, list[float]] = {name: [] for name in ("read", "measure", "crop_resample", "preprocess", "network", "report")}
    floor, decompress, baseline = [], [], []
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        path = Path(tmp) / "scan.nii.gz"
        scan = _phantom_scan(path, shape, spacing_mm, nodules)
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
            floor_s, t = time.perf_counter() - t, time.perf_counter()
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
                floor.append(floor_s)
                decompress.append(decompress_s)
                for name, seconds in times.items():
                    stages[name].append(seconds)
        # the baseline's runs after ours: its 0.6 mm volume (3 GB of temporaries) would otherwise
        # slow the runs that follow it, ours and the floor's
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
    total, floor_m, baseline_m = statistics.median(totals), statistics.median(floor), statistics.median(baseline)
    return {
        "benchmark": "scan_to_report",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "nodules": len(centres),
        "stages": {name: _summary(values) for name, values in stages.items()},
        "total": _summary(totals),
        "plain_read_floor": _summary(floor),
        "decompression_only": _summary(decompress),
        "whole_volume_baseline": _summary(baseline),
        "ratio_to_floor": total / floor_m,
        "ratio_to_decompression": total / statistics.median(decompress),
        "speedup_over_whole_volume": baseline_m / total,
        "max_patch_difference": difference,
    }


def format_scan_to_report_result(result: dict) -> str:
    lines = [f"scan to report, {'x'.join(map(str, result['shape']))}, {result['nodules']} given nodules: median seconds over {result['total']['runs']} runs"]
    for name, t in [*result["stages"].items(), ("total", result["total"]), ("plain read (floor)", result["plain_read_floor"]),
                    ("igzip decompression", result["decompression_only"]), ("whole-volume MONAI", result["whole_volume_baseline"])]:  # fmt: skip
        lines.append(f"  {name:<20} {t['median_s']:7.2f} s  (min {t['min_s']:.2f}, max {t['max_s']:.2f})")
    lines.append(f"  {result['ratio_to_floor']:.2f}x the plain read ({result['ratio_to_decompression']:.2f}x the decompression alone);"
                 f" {result['speedup_over_whole_volume']:.1f}x faster than whole-volume resampling;"
                 f" patches differ by at most {result['max_patch_difference']:.3f} (normalised)")  # fmt: skip
    return "\n".join(lines)


def bench_backbones(repeats: int = 3, batch_sizes: tuple[int, ...] = (1, 32)) -> dict:
    """Classifier throughput (patches/s, no gradients) of the default network and of every
    ``configs/backbone_*.json`` override behind the same heads, with their parameter counts (as
    trained), beside MONAI's stock 3D ``resnet18`` (a 2-class classifier) measured in the same run.
    Each runs as inference.json runs it: eval mode, batch norms folded where they follow a MONAI
    ``Convolution``'s convolution (the default encoder's), ``channels_last_3d``."""
    from monai.bundle import ConfigParser
    from monai.networks.nets import resnet18

    from nodule_bundle.apps.workflow import find_bundle_root

    configs = find_bundle_root() / "configs"
    patch_size = int(ConfigParser.load_config_file(str(configs / "train.json"))["patch_size"])
    networks: dict[str, torch.nn.Module] = {}
    for name, names in backbone_configs().items():
        parser = ConfigParser()
        parser.read_config([str(configs / f"{config}.json") for config in names])
        networks[name] = parser.get_parsed_content("network_def")
    networks["monai_resnet18_stock"] = resnet18(spatial_dims=3, n_input_channels=1, num_classes=2)
    result: dict = {"benchmark": "backbones", "patch_size": patch_size, "networks": {}}
    for name, network in networks.items():
        entry = {"parameters": sum(p.numel() for p in network.parameters())}
        network = _as_inference_runs_it(network)
        for batch in batch_sizes:
            x = torch.rand(batch, 1, patch_size, patch_size, patch_size)
            with torch.no_grad():
                times = time_alternating({name: lambda: network(x)}, repeats)[name]
            entry[f"patches_per_s_batch{batch}"] = batch / times["median_s"]
        result["networks"][name] = entry
    stock = result["networks"]["monai_resnet18_stock"]
    for entry in result["networks"].values():
        entry["speed_vs_stock_resnet18_batch32"] = entry.get("patches_per_s_batch32", 0) / stock.get("patches_per_s_batch32", 1)
    return result


def format_backbones_result(result: dict) -> str:
    lines = [f"classifier throughput, {result['patch_size']}^3 patches, patches/s (median)"]
    for name, e in result["networks"].items():
        rates = "  ".join(f"batch {k.removeprefix('patches_per_s_batch')}: {v:8.1f}" for k, v in e.items() if k.startswith("patches_per_s"))
        lines.append(f"  {name:<22} {e['parameters']:>11,} params  {rates}  ({e['speed_vs_stock_resnet18_batch32']:.1f}x stock resnet18)")
    return "\n".join(lines)


def backbone_configs() -> dict[str, list[str]]:
    """Every backbone the bundle offers, by name, with the configs that train it: ``default``
    (train.json's network) and each ``configs/backbone_*.json`` override on top of train.json."""
    from nodule_bundle.apps.workflow import find_bundle_root

    overrides = sorted(path.stem for path in (find_bundle_root() / "configs").glob("backbone_*.json"))
    return {"default": ["train"], **{name: ["train", name] for name in overrides}}


def bench_backbone_accuracy(out: str | Path, scans: int = 24, epochs: int = 15, backbones: list[str] | None = None, seed: int = 0,
                            cfg=None, test_scans: int | None = None, evaluate_only: bool = False) -> dict:  # fmt: skip
    """Test malignancy AUC (and size-band accuracy, diameter MAE) of each backbone trained the same
    way, ``epochs`` epochs on one phantom dataset of ``scans`` scans (``cfg``: its
    :class:`~nodule_bundle.data.phantom.PhantomConfig`) written to ``out/data``, with the training
    time of each (``out/<name>/training.json``). ``test_scans``: that many more scans for the test
    split alone (``None``: the usual 15 % of ``scans``), for a tighter AUC at no training cost.
    ``backbones``: names from :func:`backbone_configs` (default: all). ``evaluate_only``: evaluate
    the models an earlier run trained in ``out`` (its phantom and training records), training none.

    Each backbone's AUC is compared with the best one's on the same test nodules (their
    ``predictions.csv``) by :func:`~nodule_bundle.evaluation.metrics.paired_auc_difference`: ``auc_vs_best``."""
    import json

    from nodule_bundle.apps.workflow import find_bundle_root, run_bundle
    from nodule_bundle.core.io_utils import write_json_atomic
    from nodule_bundle.data.phantom import PhantomConfig
    from nodule_bundle.data.synth import write_phantom_dataset

    available = backbone_configs()
    chosen = backbones or list(available)
    unknown = set(chosen) - set(available)
    if unknown:
        raise NoduleBundleError(f"unknown backbone(s) {sorted(unknown)}; available: {sorted(available)}")
    out, root = Path(out), find_bundle_root()
    datalist = out / "data" / "datalist.json"
    if evaluate_only:
        _require_files([datalist, *(out / name / record for name in chosen for record in ("models/model.pt", "training.json"))], "--evaluate-only")
    else:
        total = scans + (test_scans or 0)
        fractions = (0.15, 0.15) if test_scans is None else (max(1, round(0.15 * scans)) / total, test_scans / total)
        write_phantom_dataset(out / "data", total, seed, cfg=cfg or PhantomConfig(), negatives_per_scan=8, split_fractions=fractions)
    splits = json.loads(datalist.read_text())
    result: dict = {"benchmark": "backbone_accuracy", "scans": len({item["image"] for items in splits.values() if isinstance(items, list) for item in items}),
                    "test_nodules": sum(item.get("is_nodule", 1) == 1 for item in splits["test"]), "backbones": {}}  # fmt: skip
    predictions = {}
    for name in chosen:
        configs = available[name]
        common = dict(dataset_dir=str(out / "data"), datalist=str(datalist), ckpt_dir=str(out / name / "models"), output_dir=str(out / name / "eval"),
                      num_workers=0, show_progress=False, seed=seed)  # fmt: skip
        if not evaluate_only:
            start = time.perf_counter()
            run_bundle(configs, root, epochs=epochs, **common)
            write_json_atomic(out / name / "training.json", {"epochs": epochs, "seed": seed, "train_s": time.perf_counter() - start})
        training = json.loads((out / name / "training.json").read_text())
        run_bundle([*configs, "evaluate"], root, **common)
        metrics = json.loads((out / name / "eval" / "metrics.json").read_text())
        predictions[name] = _malignancy_predictions(out / name / "eval" / "predictions.csv")
        result["backbones"][name] = {"epochs": training["epochs"], "train_s": training["train_s"],
                                     **{k: metrics.get(k) for k in ("malignancy_auc", "size_band_accuracy", "diameter_mae_mm")}}  # fmt: skip
    aucs = {name: e["malignancy_auc"] for name, e in result["backbones"].items() if e["malignancy_auc"] is not None}
    result["best"] = max(aucs, key=aucs.get) if aucs else None
    for name in aucs:
        if name != result["best"]:
            result["backbones"][name]["auc_vs_best"] = _paired_against(predictions[name], predictions[result["best"]])
    return result


def _require_files(paths: list[Path], why: str) -> None:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise NoduleBundleError(f"{why} needs what an earlier run wrote, missing: {', '.join(missing)}")


def _malignancy_predictions(path: Path) -> dict[tuple[str, str], tuple[int, float]]:
    """``(seriesuid, nodule_id) -> (malignancy_true, malignancy_prob)`` for the nodules of a
    ``predictions.csv`` whose malignancy is known (false candidates and unknown labels left out)."""
    import csv

    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return {(r["seriesuid"], r["nodule_id"]): (int(float(r["malignancy_true"])), float(r["malignancy_prob"]))
            for r in rows if r["malignancy_true"] and r["nodule_true"] != "0"}  # fmt: skip


def _paired_against(predictions: dict, best: dict) -> dict:
    """:func:`~nodule_bundle.evaluation.metrics.paired_auc_difference` of one backbone's P(malignant) against
    the best one's, on the nodules both predicted (the same test split: all of them)."""
    from nodule_bundle.evaluation.metrics import paired_auc_difference

    shared = sorted(predictions.keys() & best.keys())
    labels = [best[key][0] for key in shared]
    return {**paired_auc_difference(labels, [predictions[key][1] for key in shared], [best[key][1] for key in shared]), "nodules": len(shared)}


def format_backbone_accuracy_result(result: dict) -> str:
    lines = [f"test split ({result['test_nodules']} nodules) of a {result['scans']}-scan phantom, every backbone trained on the same scans"]
    for name, e in result["backbones"].items():
        auc = "n/a  " if e["malignancy_auc"] is None else f"{e['malignancy_auc']:.3f}"
        paired = e.get("auc_vs_best")
        versus = f"  vs best {paired['difference']:+.3f} (95 % CI {paired['ci95'][0]:+.3f} to {paired['ci95'][1]:+.3f})" if paired else ""
        lines.append(f"  {name:<18} AUC {auc}{versus}  band acc {e['size_band_accuracy']:.3f}  diameter MAE {e['diameter_mae_mm']:.2f} mm"
                     f"  trained {e['epochs']} epochs in {e['train_s']:.0f} s")  # fmt: skip
    lines.append(f"  best: {result['best']}")
    return "\n".join(lines)


def bench_measure(scans: int = 8, seed: int = 0, first_index: int = 70, bundle_root: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Measured mean diameter (:class:`~nodule_bundle.measuring.transforms.NoduleMeasured` as the bundle's
    inference.json configures it, with config ``overrides``: its learned segmentation too, when it has
    one) against each phantom nodule's reference diameter, over ``scans`` phantom scans not used
    by the demo's dataset (indices from ``first_index``): MAE and bias per texture and margin, and the
    time per nodule."""
    from nodule_bundle.apps.bench_realism import measurement_transforms
    from nodule_bundle.core.geometry import LPS_TO_RAS
    from nodule_bundle.core.nodule import texture_from_measurement
    from nodule_bundle.data.phantom import make_scan

    measure, errors, seconds, textures, learned = measurement_transforms(bundle_root, overrides).transforms[-1], {}, [], {}, 0
    measure.workers = 1
    for index in range(first_index, first_index + scans):
        scan = make_scan(seed, index)
        image = MetaTensor(torch.from_numpy(scan.volume_hu[None].astype(np.float32)), affine=torch.as_tensor(LPS_TO_RAS @ scan.affine_lps))
        start = time.perf_counter()
        measured = measure({"image": image, "center_world_mm": [pn.nodule.center_world_mm for pn in scan.nodules]})
        seconds.append((time.perf_counter() - start) / len(scan.nodules))
        learned += measured["measured_by"].count("learned")
        for k, pn in enumerate(scan.nodules):
            # not segmented (NaN) counts as 0 mm: missed by the whole diameter
            mean_diameter, solid = (float(np.nan_to_num(measured[key][k])) for key in ("measured_mean_diameter_mm", "measured_solid_mean_diameter_mm"))
            errors.setdefault(f"{pn.nodule.texture} {pn.margin}", []).append(mean_diameter - pn.nodule.diameter_mm)
            textures.setdefault(pn.nodule.texture, []).append(texture_from_measurement(mean_diameter, solid) == pn.nodule.texture)
    solid = [e for key, values in errors.items() if key.startswith("solid ") for e in values]

    def stats(values: list[float]) -> dict:
        return {"n": len(values), "mae_mm": float(np.mean(np.abs(values))), "bias_mm": float(np.mean(values))}

    return {
        "benchmark": "measure",
        "scans": scans,
        "groups": {key: stats(values) for key, values in sorted(errors.items())},
        "solid": stats(solid),
        "all": stats([e for values in errors.values() for e in values]),
        "texture_agreement": {texture: {"n": len(v), "agreement": float(np.mean(v))} for texture, v in sorted(textures.items())},
        "measured_by_learned_mask": learned,
        "seconds_per_nodule": _summary(seconds),
    }


def format_measure_result(result: dict) -> str:
    lines = [f"measured mean diameter vs reference, {result['all']['n']} nodules of {result['scans']} phantom scans"]
    for name, g in [*result["groups"].items(), ("all solid", result["solid"]), ("all", result["all"])]:
        lines.append(f"  {name:<26} n={g['n']:<4} MAE {g['mae_mm']:.2f} mm  bias {g['bias_mm']:+.2f} mm")
    for texture, t in result["texture_agreement"].items():
        lines.append(f"  texture from the mask, {texture:<14} n={t['n']:<4} agrees {t['agreement']:.0%}")
    lines.append(f"  {result['measured_by_learned_mask']} measured on the learned mask, {result['seconds_per_nodule']['median_s']:.3f} s per nodule (median)")
    return "\n".join(lines)


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
        scan = _phantom_scan(path, shape, spacing_mm, nodules)
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


def bench_train(scans: int = 4, epochs: int = 2, seed: int = 0) -> dict:
    """Training throughput (samples/s) and the share of step time spent waiting for data, with the
    bundle's ``CacheDataset`` (deterministic transforms cached, random ones after) against a plain
    ``Dataset`` running every transform per sample, same loader class, network and optimizer from
    ``configs/train.json``, on ``scans`` phantom scans like the demo's (200 x 170 x 140 mm, 8-12
    nodules); ``epochs`` timed epochs after the cache is built."""
    from monai.bundle import ConfigParser
    from monai.data import Dataset

    from nodule_bundle.apps.workflow import find_bundle_root
    from nodule_bundle.data.phantom import PhantomConfig
    from nodule_bundle.data.synth import write_phantom_dataset

    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        cfg = PhantomConfig(nodules_per_scan=(8, 12))
        datalist = write_phantom_dataset(tmp, scans, seed, cfg=cfg, workers=1, negatives_per_scan=5)
        parser = ConfigParser()
        parser.read_config(str(find_bundle_root() / "configs" / "train.json"))
        parser.update({"dataset_dir": tmp, "datalist": str(datalist), "num_workers": 0, "show_progress": False})
        network, loss, optimizer = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
        items, transform = parser.get_parsed_content("train#datalist"), parser.get_parsed_content("train#preprocessing")
        cached = parser.get_parsed_content("train#dataloader")  # train.json's loader over its CacheDataset
        loaders = {"cached": cached, "uncached": type(cached)(Dataset(items, transform), batch_size=parser["batch_size"], shuffle=True, num_workers=0)}
        result: dict = {"benchmark": "train", "samples": len(items), "epochs": epochs, "loader": type(cached).__name__, "pipelines": {}}
        for name, loader in loaders.items():
            wait = step = 0.0
            network.train()
            for _ in range(epochs):
                t = time.perf_counter()
                for batch in loader:
                    got = time.perf_counter()
                    optimizer.zero_grad()
                    loss(network(batch["image"].to(parser.get_parsed_content("device"))), batch["label"]).backward()
                    optimizer.step()
                    done = time.perf_counter()
                    wait, step, t = wait + got - t, step + done - got, done
            total = wait + step
            result["pipelines"][name] = {"samples_per_s": epochs * len(items) / total, "data_wait_share": wait / total, "seconds": total}
    result["cached_speedup"] = result["pipelines"]["cached"]["samples_per_s"] / result["pipelines"]["uncached"]["samples_per_s"]
    return result


def format_train_result(result: dict) -> str:
    lines = [f"training throughput, {result['samples']} samples, {result['epochs']} epochs after caching, {result['loader']}"]
    for name, p in result["pipelines"].items():
        lines.append(f"  {name:<9} {p['samples_per_s']:8.1f} samples/s  data wait {100 * p['data_wait_share']:5.1f} % of step time")
    lines.append(f"  cached / uncached: {result['cached_speedup']:.1f}x")
    return "\n".join(lines)
