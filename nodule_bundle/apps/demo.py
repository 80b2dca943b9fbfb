"""``nodule-bundle demo``: the main job end to end on an embedded default.

phantom dataset -> ``train.json`` -> temperature scaling on the validation split (``calibrate.json``)
-> ``train.json + evaluate.json`` on the test split (metrics and figures) ->
``inference.json`` on the held-out test scan with the most nodules, given their coordinates and
then without them (the whole-scan path: detect, classify, reduce) -> ``inference.json +
evaluate_detection.json`` on the test split (FROC, CPM) -> tables, ``metrics.json``, ``froc.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from nodule_bundle.apps.workflow import find_bundle_root, run_bundle
from nodule_bundle.core.io_utils import write_json_atomic
from nodule_bundle.core.nodule import Nodule
from nodule_bundle.data.nodule_csv import write_nodule_csv
from nodule_bundle.data.phantom import PhantomConfig
from nodule_bundle.data.synth import write_phantom_dataset
from nodule_bundle.reports.report import format_table, match_findings


@dataclass(frozen=True)
class DemoSettings:
    scans: int
    epochs: int
    phantom: PhantomConfig


FULL = DemoSettings(scans=64, epochs=40, phantom=PhantomConfig())
QUICK = DemoSettings(scans=6, epochs=2, phantom=PhantomConfig(fov_mm=(150.0, 130.0, 90.0), nodules_per_scan=(10, 16)))
METRIC_NAMES = ("malignancy_auc", "malignancy_accuracy", "size_only_auc", "size_band_accuracy", "diameter_mae_mm")


def _held_out_scan(datalist_path: Path) -> tuple[str, list[dict]]:
    """The test scan with the most nodules, and its datalist items."""
    by_scan: dict[str, list[dict]] = {}
    for item in json.loads(datalist_path.read_text())["test"]:
        if item.get("is_nodule", 1):  # not the detector's false candidates kept for training
            by_scan.setdefault(item["image"], []).append(item)
    image = max(by_scan, key=lambda k: len(by_scan[k]))
    return image, by_scan[image]


def run_demo(out: Path, quick: bool = False, seed: int = 0, bundle_root: str | None = None) -> dict:
    """Run the demo into ``out``; returns the test metrics (also in ``out/metrics.json``)."""
    settings = QUICK if quick else FULL
    root = find_bundle_root(bundle_root)
    data_dir, models_dir = out / "data", out / "models"
    start = time.monotonic()

    def step(text: str) -> None:
        print(f"[{time.monotonic() - start:6.0f} s] {text}", flush=True)

    step(f"1/7 phantom: {settings.scans} chest CT scans -> {data_dir}")
    datalist = write_phantom_dataset(data_dir, settings.scans, seed, cfg=settings.phantom)
    step(f"2/7 training for up to {settings.epochs} epochs (configs/train.json)")
    common = dict(dataset_dir=str(data_dir), datalist=str(datalist), ckpt_dir=str(models_dir), seed=seed)
    run_bundle(["train"], root, output_dir=str(out / "train"), epochs=settings.epochs, **common)
    step("3/7 temperature scaling on the validation scans (configs/calibrate.json)")
    run_bundle(["train", "evaluate", "calibrate"], root, output_dir=str(out / "calibration"), **common)
    step("4/7 evaluating on the test scans (configs/evaluate.json): metrics, ROC, calibration, Bland-Altman")
    run_bundle(["train", "evaluate"], root, output_dir=str(out), **common)
    metrics = json.loads((out / "metrics.json").read_text())

    image, items = _held_out_scan(datalist)
    step(f"5/7 classifying held-out scan {Path(image).name} with {len(items)} given nodules (configs/inference.json)")
    nodule_csv = out / "report" / "nodules.csv"
    write_nodule_csv(nodule_csv, [Nodule(i["nodule_id"], i["seriesuid"], tuple(i["center_world_mm"]), float("nan")) for i in items])
    model = str(models_dir / "model.pt")
    run_bundle(["inference"], root, image=str(data_dir / image), nodules=str(nodule_csv), ckpt_path=model, output_dir=str(out / "report"))
    report = json.loads((out / "report" / "report.json").read_text())
    truth = {i["nodule_id"]: i for i in items}
    print()
    print(format_table(report["scans"][0]["nodules"], truth))

    step("6/7 the same scan without a nodule list: detect, classify, reduce (configs/inference.json)")
    run_bundle(["inference"], root, image=str(data_dir / image), ckpt_path=model, output_dir=str(out / "detect"))
    detected = json.loads((out / "detect" / "report.json").read_text())["scans"][0]
    findings, rejected = detected["nodules"], detected.get("rejected_candidates", [])
    matched, missed = match_findings(findings, items)
    print()
    print(format_table(findings, matched))
    missed_sizes = ", ".join(f"{m['diameter_mm']:.1f} mm" for m in missed) or "none"
    print(
        f"found {len(items) - len(missed)} of {len(items)} nodules, {len(findings) - len(matched)} false positives; "
        f"missed: {missed_sizes}; {len(rejected)} more candidates rejected by the network (nodule probability < 0.5)"
    )

    step("7/7 detection on every test scan: FROC and CPM (configs/evaluate_detection.json)")
    run_bundle(["inference", "evaluate_detection"], root, ckpt_path=model, output_dir=str(out), **common)
    detection = json.loads((out / "froc.json").read_text())
    metrics.update(
        cpm=detection["cpm"],
        cpm_detector_alone=detection["curves"]["detector alone"]["cpm"],
        sensitivity_at_4_fp=detection["curves"]["detector + network"]["sensitivity_at_fp_per_scan"]["4.0"],
        cpm_min_4mm=detection["curves"]["detector + network, >= 4 mm"]["cpm"],
        sensitivity_at_4_fp_min_4mm=detection["curves"]["detector + network, >= 4 mm"]["sensitivity_at_fp_per_scan"]["4.0"],
        malignancy_auc_detected=detection["malignancy_auc_detected"],
    )
    write_json_atomic(out / "metrics.json", metrics)
    print()
    print(f"test nodules: {metrics.get('n_test_nodules')}  (from {settings.scans} scans, split by scan)")
    detection_names = ("ece_uncalibrated", "ece", "cpm", "cpm_detector_alone", "sensitivity_at_4_fp", "cpm_min_4mm", "sensitivity_at_4_fp_min_4mm", "malignancy_auc_detected")
    for name in (*METRIC_NAMES, *detection_names):
        value = metrics.get(name)
        print(f"  {name:<24}{'n/a' if value is None else f'{value:.3f}'}")
    step(f"done: {out / 'metrics.json'}, {out / 'report' / 'report.json'}, {out / 'detect' / 'report.json'}, {out / 'froc.png'}")
    return metrics
