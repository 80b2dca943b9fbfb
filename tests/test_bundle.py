"""The bundle run the way users run it: ``python -m monai.bundle run`` on a phantom dataset."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pydicom
from pydicom.uid import generate_uid

from bundle_run import ROOT, bundle_args, monai_bundle_run
from nodule_bundle.detection.candidates import MIN_ROUND_SCORE
from nodule_bundle.network.networks import MultiTaskNoduleNet
from dicom_helpers import edit, new_instance, shift_position
from preloaded_runs import preloaded_bundle_runs

METRICS = ("malignancy_auc", "malignancy_accuracy", "size_only_auc", "size_band_accuracy", "diameter_mae_mm")


def test_training_writes_a_checkpoint_and_curves(trained):
    assert (trained / "models" / "model.pt").is_file()
    assert list((trained / "eval").glob("events.out.tfevents.*"))  # TensorBoard curves


def test_fine_tuning_starts_from_given_weights(trained, phantom_dir, tmp_path):
    result = monai_bundle_run(
        ["train"], dataset_dir=phantom_dir, pretrained=trained / "models" / "model.pt",
        ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval", epochs=1, num_workers=0,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    missing = monai_bundle_run(["train"], dataset_dir=phantom_dir, pretrained=tmp_path / "absent.pt", epochs=1)
    assert missing.returncode != 0 and "absent.pt" in missing.stderr


@pytest.mark.slow
def test_training_is_tracked_in_mlflow_on_request(phantom_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    result = monai_bundle_run(
        ["train"], dataset_dir=phantom_dir, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval", epochs=1, num_workers=0,
        tracking="mlflow",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "lung_nodule_ct_classification"]
    runs = client.search_runs([experiment.experiment_id])
    assert runs and any(r.data.params.get("max_epochs") == "1" for r in runs)
    metrics = {k for r in runs for k in r.data.metrics}
    assert {"train_loss", "val_score", "diameter_mae_mm", "size_band_accuracy"} <= metrics


def test_evaluate_override_writes_metrics(trained, phantom_dir, datalist):
    result = monai_bundle_run(
        ["train", "evaluate"], dataset_dir=phantom_dir, ckpt_dir=trained / "models", output_dir=trained / "test", num_workers=0
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((trained / "test" / "metrics.json").read_text())
    assert metrics["n_test_nodules"] == sum(i.get("is_nodule", 1) for i in datalist["test"])  # false candidates apart
    assert 0.0 <= metrics["nodule_auc"] <= 1.0  # nodules against the detector's false candidates
    for name in ("malignancy_accuracy", "size_band_accuracy"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["diameter_mae_mm"] >= 0.0
    assert set(METRICS) - {"malignancy_auc", "size_only_auc"} <= set(metrics)  # AUCs need both classes
    confusion = np.array(metrics["size_band_confusion"])  # reference band x predicted band
    assert confusion.shape == (4, 4) and confusion.sum() == metrics["n_test_nodules"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["size_band_accuracy"], abs=1e-6)
    lower, upper = metrics["diameter_limits_of_agreement_mm"]
    assert lower <= metrics["diameter_bias_mm"] <= upper
    for figure in ("size_band_confusion", "bland_altman") + (("roc", "calibration") if "malignancy_auc" in metrics else ()):
        assert (trained / "test" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    with open(trained / "test" / "predictions.csv", newline="") as file:  # every test item, nodule by nodule
        rows = list(csv.DictReader(file))
    assert [r["nodule_id"] for r in rows] == [str(i["nodule_id"]) for i in datalist["test"]]
    nodules = [r for r in rows if r["nodule_true"] == "1"]
    assert len(nodules) == metrics["n_test_nodules"] and all(r["malignancy_true"] == "" for r in rows if r["nodule_true"] == "0")
    assert all(0.0 <= float(r[key]) <= 1.0 for r in rows for key in ("nodule_prob", "malignancy_prob"))
    band_hits = [r["size_band"] == r["size_band_true"] for r in nodules]
    assert sum(band_hits) / len(band_hits) == pytest.approx(metrics["size_band_accuracy"], abs=1e-6)
    errors = [abs(float(r["diameter_mm_pred"]) - float(r["diameter_mm_true"])) for r in nodules]
    assert sum(errors) / len(errors) == pytest.approx(metrics["diameter_mae_mm"], abs=1e-3)


def test_temperature_scaling_changes_confidence_not_ranking(trained, phantom_dir, datalist, tmp_path):
    """Fitted on the validation split (whose run evaluates at T = 1), then that split evaluated again
    with the fitted T: the same ranking, another ECE. A broken calibration.json is in the bad-input
    corpus (``calibration_broken``)."""
    models = tmp_path / "models"  # a copy, so the calibration does not reach the other tests' bundle
    models.mkdir()
    shutil.copy(trained / "models" / "model.pt", models / "model.pt")
    fitted = monai_bundle_run(["train", "evaluate", "calibrate"], dataset_dir=phantom_dir, ckpt_dir=models, output_dir=tmp_path / "fit", num_workers=0)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    calibration = json.loads((models / "calibration.json").read_text())
    n_validation = sum(i.get("is_nodule", 1) and i.get("malignancy") is not None for i in datalist["validation"])
    assert calibration["fitted_on"] == "validation" and calibration["n_nodules"] == n_validation
    assert calibration["malignancy_temperature"] > 0 and calibration["ece_after"] <= calibration["ece_before"] + 0.05
    calibrated = monai_bundle_run(["train", "evaluate"], dataset_dir=phantom_dir, ckpt_dir=models, output_dir=tmp_path / "cal", evaluate_split="validation",
                                  num_workers=0)  # fmt: skip
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    before, after = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("fit", "cal"))
    assert after["malignancy_auc"] == pytest.approx(before["malignancy_auc"], abs=1e-9)  # same order
    assert after["ece_uncalibrated"] == pytest.approx(before["ece_before"], abs=1e-6)
    assert after["ece"] == pytest.approx(before["ece_after"], abs=1e-6)
    assert after["ece"] != pytest.approx(after["ece_uncalibrated"], abs=1e-6)


FORMATS = {"nifti": "images/{}.nii.gz", "mhd": "mhd/{}.mhd", "dicom": "dicom/{}"}


def _study_with_a_longer_series(series: Path, study: Path) -> Path:
    """A PACS-style folder: the scan's series beside another CT series with twice as many slices."""
    files = sorted(series.glob("*.dcm"))
    shutil.copytree(series, study / "target")
    dz = abs(float(pydicom.dcmread(files[1]).ImagePositionPatient[2]) - float(pydicom.dcmread(files[0]).ImagePositionPatient[2]))
    other_uid, extent = generate_uid(), len(files) * dz  # one contiguous series of 2N slices
    for copy in range(2):
        for k, path in enumerate(files):
            edit(path, lambda ds, copy=copy: (new_instance(ds), setattr(ds, "SeriesInstanceUID", other_uid),
                                              shift_position((0, 0, copy * extent))(ds)), study / f"other{copy}_{k}.dcm")  # fmt: skip
    return study


@pytest.fixture(scope="module")
def reports(trained, phantom_dir, test_scan, tmp_path_factory) -> dict[str, Path]:
    """Inference on the same test scan read from NIfTI, MHD and a DICOM series; the output dirs."""
    uid, _, csv_path = test_scan
    before = csv_path.read_bytes()
    images = {fmt: phantom_dir / pattern.format(uid) for fmt, pattern in FORMATS.items()}
    images["dicom_study"] = _study_with_a_longer_series(phantom_dir / FORMATS["dicom"].format(uid), tmp_path_factory.mktemp("study"))
    outputs = {fmt: tmp_path_factory.mktemp(f"report_{fmt}") for fmt in images}
    runs = preloaded_bundle_runs([bundle_args(["inference"], image=image, nodules=csv_path, seriesuid=uid, ckpt_path=trained / "models" / "model.pt",
                                              output_dir=outputs[fmt]) for fmt, image in images.items()])  # fmt: skip
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    assert csv_path.read_bytes() == before  # inputs are read-only
    return outputs


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_inference_report_rows_match_the_input_nodules(reports, test_scan, fmt):
    uid, rows, _ = test_scan
    report = json.loads((reports[fmt] / "report.json").read_text())
    assert report["model"]["name"] == "lung_nodule_ct_classification" and report["model"]["version"]
    (scan,) = report["scans"]
    assert scan["seriesuid"] == uid
    assert [n["nodule_id"] for n in scan["nodules"]] == [r["nodule_id"] for r in rows]
    for finding, row in zip(scan["nodules"], rows):
        np.testing.assert_allclose(finding["center_world_mm"], row["center_world_mm"], atol=0.01)
        assert 0.0 <= finding["malignancy_probability"] <= 1.0 and finding["diameter_mm"] > 0
        assert finding["size_band"] in (0, 1, 2, 3)
        assert finding["semantic_ratings"] is None  # the phantom has no readers' ratings: the heads never learned any
    measured = [f for f in scan["nodules"] if f["measured_mean_diameter_mm"] is not None]
    assert len(measured) >= 0.8 * len(rows) and all(f["measured_volume_mm3"] > 0 for f in measured)
    with open(reports[fmt] / "report.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:5] == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert [r["nodule_id"] for r in table] == [r["nodule_id"] for r in rows]


def test_inference_without_a_nodule_list_detects_classifies_and_reduces(trained, phantom_dir, test_scan, tmp_path):
    uid, rows, _ = test_scan
    result = monai_bundle_run(
        ["inference"], image=phantom_dir / FORMATS["nifti"].format(uid), ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (scan,) = json.loads((tmp_path / "report.json").read_text())["scans"]
    kept, rejected = scan["nodules"], scan.get("rejected_candidates", [])
    assert all(n["nodule_probability"] >= 0.5 for n in kept) and all(n["nodule_probability"] < 0.5 for n in rejected)
    candidates = kept + rejected
    assert all(n["detection_score"] >= MIN_ROUND_SCORE and n["detection_radius_mm"] > 0 for n in candidates)  # r b >= r b^2 >= 40 or r b >= 100
    hit = [
        any(np.linalg.norm(np.subtract(c["center_world_mm"], r["center_world_mm"])) <= r["diameter_mm"] / 2 for c in candidates)
        for r in rows if r["diameter_mm"] >= 4.0
    ]  # fmt: skip
    assert sum(hit) >= 0.6 * len(hit)  # the detector finds most nodules (FROC: evaluate_detection); the 2-epoch network is no judge yet


def test_a_scan_in_which_nothing_is_found_is_reported_with_no_nodules(trained, tmp_path):
    """Detection runs in the pipeline after the one read: a scan with no lung finds no candidate, the
    evaluator skips the network for its empty batch, and the report says no nodule."""
    from nodule_bundle.data.writers import write_nifti

    image, body = tmp_path / "no-lungs.nii.gz", np.full((80, 80, 40), -1000, np.int16)
    body[10:70, 10:70] = 40  # soft tissue in air: a CT with no lung in it
    write_nifti(image, body, np.diag([1.0, 1.0, 2.0, 1.0]))
    result = monai_bundle_run(["inference"], image=image, ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    (scan,) = json.loads((tmp_path / "out" / "report.json").read_text())["scans"]
    assert scan["seriesuid"] == "no-lungs" and scan["nodules"] == [] and not scan.get("rejected_candidates")


def test_detection_evaluation_writes_froc_and_cpm(trained, phantom_dir, datalist, tmp_path):
    result = monai_bundle_run(
        ["inference", "evaluate_detection"], dataset_dir=phantom_dir, ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    froc = json.loads((tmp_path / "froc.json").read_text())
    test_nodules = [i for i in datalist["test"] if i.get("is_nodule", 1)]
    assert set(froc["curves"]) == {
        f"{name}{size}" for name in ("detector + network", "detector alone", "network alone") for size in ("", ", >= 4 mm")
    }
    for name, curve in froc["curves"].items():
        counted = [i for i in test_nodules if i["diameter_mm"] >= 4.0] if ">= 4 mm" in name else test_nodules
        assert curve["n_nodules"] == len(counted) and curve["n_scans"] == len({i["image"] for i in test_nodules})
        assert set(curve["sensitivity_at_fp_per_scan"]) == {"0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
        assert 0.0 <= curve["cpm"] <= curve["max_sensitivity"] <= 1.0
    assert froc["curves"]["detector alone"]["max_sensitivity"] >= 0.6
    detections = json.loads((tmp_path / "detections.json").read_text())["scans"]
    assert sum(len(s["candidates"]) for s in detections) >= froc["curves"]["detector alone"]["n_candidates"] > 0  # + second hits
    assert (tmp_path / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reports_agree_across_image_formats(reports):
    found = {
        fmt: [(n["malignancy_probability"], n["diameter_mm"]) for n in json.loads((out / "report.json").read_text())["scans"][0]["nodules"]]
        for fmt, out in reports.items()
    }
    np.testing.assert_allclose(found["mhd"], found["nifti"], atol=1e-3)
    np.testing.assert_allclose(found["dicom"], found["nifti"], atol=1e-3)
    np.testing.assert_allclose(found["dicom_study"], found["nifti"], atol=1e-3)  # --seriesuid chose the series


def test_train_and_inference_share_network_and_preprocessing():
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    infer = json.loads((ROOT / "configs" / "inference.json").read_text())
    keys = ("patch_size", "patch_spacing_mm", "hu_window", "denoise_sigma_mm", "deblur", "equalize", "edge_channel", "network_def")
    assert {k: train[k] for k in keys} == {k: infer[k] for k in keys}
    infer_steps = [dict(step) for step in infer["preprocessing"]["transforms"]]
    assert infer_steps[0].pop("series_uid") == "@seriesuid"  # inference reads the series it is told to
    assert infer_steps.pop(1)["_target_"] == "nodule_bundle.detection.transforms.DetectNodulesd"  # finds nodules without a list
    assert infer_steps.pop(1)["_target_"] == "nodule_bundle.measuring.transforms.NoduleMeasured"  # and measures each nodule
    assert "detection_score" in infer_steps[1].pop("per_nodule_keys")  # and reports what the detector found
    assert infer_steps[2].pop("allow_missing_keys") is True  # a scan without nodules is a record, not a patch
    train_steps = [dict(step) for step in train["deterministic_transforms"][:3]]
    assert train_steps[0].pop("recent_scans") >= 1  # training reads each scan once for all its nodules' items
    assert train_steps == infer_steps


def test_gpu_options_are_harmless_on_cpu(trained, phantom_dir, test_scan, tmp_path):
    """configs/gpu_train.json (AMP, channels_last_3d, ThreadDataLoader, cache on the device) trains on
    CPU too, and inference with --amp, with --channels_last False (the network's layout as trained;
    inference.json's default is channels_last_3d, faster on CPU too), or with --compile
    (torch.compile), gives the same report as without."""
    uid, _, csv_path = test_scan
    image, weights = phantom_dir / "images" / f"{uid}.nii.gz", trained / "models" / "model.pt"
    options = {"plain": {"channels_last": False}, "gpu options": {"amp": True, "channels_last": True}, "compiled": {"compile": True}}
    train, *runs = preloaded_bundle_runs([
        bundle_args(["train", "gpu_train"], dataset_dir=phantom_dir, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval", epochs=1, num_workers=0),
        *[bundle_args(["inference"], image=image, nodules=csv_path, ckpt_path=weights, output_dir=tmp_path / name, **o) for name, o in options.items()],
    ])  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    MultiTaskNoduleNet().load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True), strict=True)
    reports = {}
    for name, run in zip(options, runs):
        assert run.returncode == 0, run.stderr[-3000:]
        reports[name] = [n["malignancy_probability"] for n in json.loads((tmp_path / name / "report.json").read_text())["scans"][0]["nodules"]]
    np.testing.assert_allclose(reports["gpu options"], reports["plain"], atol=1e-3)
    np.testing.assert_allclose(reports["compiled"], reports["plain"], atol=1e-4)


def test_inference_runs_the_network_with_its_batch_norms_folded_in_channels_last():
    """inference.json's initialize folds the encoder's batch norms (after the weights would load) and
    leaves the network in eval mode and channels_last_3d, the layout that is faster on CPU too."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    parser["load_pretrain"], parser["dataset#data"] = False, []
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network_def")
    assert not network.training and not any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
    assert network.encoder.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
