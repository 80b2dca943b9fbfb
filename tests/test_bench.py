"""``nodule-bundle bench read`` measures both readers on the same series (no timing is asserted)."""

import json

from nodule_bundle.cli import main


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


def test_whole_scan_benchmark_reports_every_stage(tmp_path, capsys):
    out = tmp_path / "whole.json"
    assert main(["bench", "whole-scan", "--shape", "160", "140", "60", "--nodules", "3", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages"]) == {"read", "lung_mask", "candidates", "measure", "crop_preprocess", "network"}
    assert result["total"]["median_s"] >= sum(t["median_s"] for t in result["stages"].values()) - 1e-6
    assert result["candidates"] >= 1 and "total" in capsys.readouterr().out


def test_scan_to_report_benchmark_compares_both_baselines(tmp_path, capsys):
    out = tmp_path / "scan.json"
    assert main(["bench", "scan", "--shape", "128", "112", "50", "--nodules", "3", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["stages"]) == {"read", "measure", "crop_resample", "preprocess", "network", "report"}
    total = result["total"]["median_s"]
    assert result["ratio_to_floor"] == total / result["plain_read_floor"]["median_s"]
    assert result["speedup_over_whole_volume"] == result["whole_volume_baseline"]["median_s"] / total
    assert 1 <= result["nodules"] <= 3 and 0 <= result["max_patch_difference"] < 1  # as many as the phantom fits
    assert "faster than whole-volume resampling" in capsys.readouterr().out
