"""``nodule-bundle bench read`` measures both readers on the same series (no timing is asserted)."""

import json

import pytest
import torch

from nodule_bundle.apps.bench.timing import inference_config, inference_network, inference_steps
from nodule_bundle.apps.cli import main
from nodule_bundle.core.errors import NoduleBundleError


def test_read_benchmark_reports_medians_and_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "read", "--shape", "64", "48", "12", "--repeats", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["shape"] == [64, 48, 12]
    assert set(result["times"]) == {"itk_series_reader", "monai_itkreader", "bundle_loader"}
    for t in result["times"].values():
        assert t["runs"] == 2 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
    expected = result["times"]["bundle_loader"]["median_s"] / result["times"]["itk_series_reader"]["median_s"]
    assert result["ratio_bundle_to_itk"] == expected
    assert "ratio bundle / ITK series reader" in capsys.readouterr().out


@pytest.mark.slow
def test_whole_scan_benchmark_reports_every_stage(tmp_path, capsys):
    out = tmp_path / "whole.json"
    assert main(["bench", "whole-scan", "--shape", "160", "140", "60", "--nodules", "3", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages"]) == {"read", "lung_mask", "candidates", "measure", "crop_preprocess", "network"}
    assert result["total"]["median_s"] >= sum(t["median_s"] for t in result["stages"].values()) - 1e-6
    assert result["candidates"] >= 1 and "total" in capsys.readouterr().out
    ref = result["reference_log"]  # the detector's LoG against ITK's LaplacianRecursiveGaussianImageFilter on the same scan
    assert ref["candidates_s"] > 0 and ref["nodules"] == 3
    assert ref["reference_found_within_1mm"] >= ref["reference_candidates"] - 1 and ref["nodules_hit"] >= ref["nodules_hit_by_reference"]


def test_scan_to_report_benchmark_compares_both_baselines(tmp_path, capsys):
    out = tmp_path / "scan.json"
    assert main(["bench", "scan", "--shape", "128", "112", "50", "--nodules", "3", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages"]) == {"read", "measure", "crop_resample", "preprocess", "network", "report"}
    total = result["total"]["median_s"]
    assert result["ratio_to_decompression_floor"] == total / result["decompression_floor"]["median_s"]  # the headline
    assert result["ratio_to_nibabel_read"] == total / result["nibabel_read"]["median_s"]  # which is lower is timing, not asserted
    assert result["speedup_over_whole_volume"] == result["whole_volume_baseline"]["median_s"] / total
    assert 1 <= result["nodules"] <= 3  # as many as the phantom fits
    assert 0 <= result["max_patch_difference"] <= 0.02  # crop-first samples the scan where the whole-volume pipeline does
    printed = capsys.readouterr().out
    assert f"{result['ratio_to_decompression_floor']:.2f}x the floor (the file's decompression alone" in printed  # the headline
    assert "faster than whole-volume resampling" in printed


def test_backbone_benchmark_covers_every_backbone_config_and_the_stock_resnet(monkeypatch):
    from nodule_bundle.apps.bench import backbones

    def one_pass_each(candidates, repeats):  # a real forward pass of every network, a fixed time
        for run in candidates.values():
            run()
        return {name: {"median_s": 0.5} for name in candidates}

    monkeypatch.setattr(backbones, "time_alternating", one_pass_each)
    result = backbones.bench_backbones(repeats=1, batch_sizes=(2,))
    assert set(result["networks"]) == {"default", "backbone_resnet", "backbone_densenet", "backbone_vit", "monai_resnet18_stock"}
    assert result["networks"]["default"]["parameters"] < result["networks"]["monai_resnet18_stock"]["parameters"]
    assert all(e["patches_per_s_batch2"] == 4.0 for e in result["networks"].values())


def test_measurement_benchmark_groups_errors_by_texture_and_margin(tmp_path, capsys):
    out = tmp_path / "measure.json"
    assert main(["bench", "measure", "--scans", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["all"]["n"] == sum(g["n"] for g in result["groups"].values()) >= 5
    assert result["solid"]["mae_mm"] < 2.0  # a broken segmentation is off by many millimetres
    assert "all solid" in capsys.readouterr().out


@pytest.mark.slow
def test_memory_benchmark_measures_a_real_inference_process(tmp_path):
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--shape", "128", "112", "50", "--nodules", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peak_rss_mb_inference"] > result["peak_rss_mb_imports"] > 50  # the scan and network come on top


@pytest.mark.slow
def test_training_benchmark_compares_the_cached_and_plain_pipelines(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--scans", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["pipelines"]) == {"cached", "uncached"} and result["samples"] > 0
    for p in result["pipelines"].values():
        assert p["samples_per_s"] > 0 and 0 <= p["data_wait_share"] <= 1
    assert result["cached_speedup"] == result["pipelines"]["cached"]["samples_per_s"] / result["pipelines"]["uncached"]["samples_per_s"]


@pytest.mark.slow
def test_backbone_accuracy_benchmark_trains_and_tests_each_chosen_backbone(tmp_path):
    from nodule_bundle.apps.bench.backbones import bench_backbone_accuracy, format_backbone_accuracy_result
    from nodule_bundle.data.phantom import PhantomConfig

    chosen = ["default", "backbone_vit"]
    result = bench_backbone_accuracy(tmp_path, scans=3, epochs=1, backbones=chosen, cfg=PhantomConfig(fov_mm=(130.0, 110.0, 70.0)), test_scans=2)
    assert list(result["backbones"]) == chosen and result["scans"] == 5
    splits = json.loads((tmp_path / "data" / "datalist.json").read_text())
    scans_of = {split: {item["image"] for item in splits[split]} for split in ("training", "validation", "test")}
    assert [len(scans_of[s]) for s in ("training", "validation", "test")] == [2, 1, 2]  # the extra scans test only
    assert result["test_nodules"] == sum(item.get("is_nodule", 1) == 1 for item in splits["test"]) > 0
    for name, entry in result["backbones"].items():
        metrics = json.loads((tmp_path / name / "eval" / "metrics.json").read_text())
        assert entry["malignancy_auc"] == metrics["malignancy_auc"] and entry["diameter_mae_mm"] == metrics["diameter_mae_mm"]
        assert (tmp_path / name / "models" / "model.pt").is_file() and entry["train_s"] > 0 and entry["epochs"] == 1
    best, (other,) = result["best"], set(chosen) - {result["best"]}
    paired = result["backbones"][other]["auc_vs_best"]  # on the same test nodules, by their predictions.csv
    gap = result["backbones"][other]["malignancy_auc"] - result["backbones"][best]["malignancy_auc"]
    assert paired["difference"] == pytest.approx(gap) and paired["ci95"][0] <= paired["difference"] <= paired["ci95"][1]
    labelled = [i for i in splits["test"] if i.get("is_nodule", 1) == 1 and i.get("malignancy") is not None]
    assert paired["nodules"] == len(labelled) and "auc_vs_best" not in result["backbones"][best]
    assert "1 epochs" in format_backbone_accuracy_result(result) and "95 % CI" in format_backbone_accuracy_result(result)

    model = tmp_path / "default" / "models" / "model.pt"
    trained_at = model.stat().st_mtime_ns
    again = bench_backbone_accuracy(tmp_path, backbones=chosen, evaluate_only=True)  # the same models, evaluated anew
    assert model.stat().st_mtime_ns == trained_at and again["backbones"] == result["backbones"]
    model.unlink()
    with pytest.raises(NoduleBundleError, match="--evaluate-only needs .*default/models/model.pt"):
        bench_backbone_accuracy(tmp_path, backbones=chosen, evaluate_only=True)


def test_backbone_accuracy_benchmark_refuses_an_unknown_backbone(tmp_path):
    from nodule_bundle.apps.bench.backbones import bench_backbone_accuracy

    with pytest.raises(NoduleBundleError, match="unknown backbone.*backbone_resnet"):
        bench_backbone_accuracy(tmp_path, backbones=["default", "backbone_resnet50"])


def test_backbone_accuracy_evaluate_only_names_what_an_earlier_run_should_have_left(tmp_path, capsys):
    assert main(["bench", "backbone-accuracy", "--work", str(tmp_path), "--evaluate-only", "--backbones", "default"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nodule-bundle: error: --evaluate-only needs") and str(tmp_path / "data" / "datalist.json") in error
    assert str(tmp_path / "default" / "training.json") in error and not list(tmp_path.iterdir())  # nothing written


def test_benchmarks_time_the_bundles_own_pipeline():
    """The benchmarks take their stages from configs/inference.json, parsed once with overrides:
    what the bundle runs, not a copy with its own numbers."""
    parser = inference_config(overrides={"detection_min_score": 55.0, "patch_size": 32, "not_an_id": 1})
    steps = inference_steps(parser)
    assert [type(step).__name__ for step in steps.values()] == ["LoadCTImaged", "DetectNodulesd", "NoduleMeasured", "NoduleCropd", "CTPreprocessd"]
    assert steps["detect"].min_score == 55.0 and steps["detect"].spacing_mm == parser["detection_spacing_mm"]
    assert steps["crop"].cropper.patch_size == 32 and steps["crop"].cropper.spacing_mm == parser["patch_spacing_mm"]
    assert steps["preprocess"].preprocess.denoise_sigma_mm == parser["denoise_sigma_mm"]
    network = inference_network(parser)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())  # folded, as inference's initialize leaves it


def test_label_load_latency_of_one_answer_is_that_answer():
    from nodule_bundle.apps.bench.label import _latency

    assert _latency([1.5]) == {"p50_s": 1.5, "p95_s": 1.5, "runs": 1}
    many = _latency([float(k) for k in range(1, 101)])
    assert many["p50_s"] == 50.5 and 95.0 <= many["p95_s"] <= 96.0


@pytest.mark.slow
def test_followup_benchmark_scores_matching_growth_and_categories_against_the_truth(tmp_path, capsys):
    out = tmp_path / "followup.json"
    assert main(["bench", "followup", "--patients", "1", "--timepoints", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pairs_of_scans"] == 1 and result["nodule_pairs"] >= 5
    assert result["matched_right"] >= 0.9 > result["matched_right_without_registration"]  # the patient moved: registration is what matches them
    assert 0.5 < result["status_agreement"] <= 1.0 and 0.5 < result["lung_rads_agreement"] <= 1.0
    assert result["click_prior_found_right"] >= 0.8 and result["click_prior_found_wrong"] == 0  # a click's own search of the prior
    printed = capsys.readouterr().out
    assert "matched right" in printed and "a click, no prior list" in printed
