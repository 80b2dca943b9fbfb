"""The main job, small: ``nodule-bundle demo --quick``."""

import json

from nodule_bundle.apps.cli import main
from nodule_bundle.apps.demo import METRIC_NAMES


def test_quick_demo_trains_evaluates_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test_nodules"] > 0
    for name in ("malignancy_accuracy", "size_band_accuracy", "diameter_mae_mm"):
        assert name in metrics and metrics[name] >= 0.0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    held_out = [line for line in (tmp_path / "report" / "nodules.csv").read_text().splitlines()[1:] if line]
    assert len(report["scans"][0]["nodules"]) == len(held_out)
    printed = capsys.readouterr().out
    assert "ref label" in printed and all(name in printed for name in METRIC_NAMES[2:])
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "cpm" in printed and "false positive" in printed and "found " in printed  # the whole-scan path
    assert 0.0 <= metrics["cpm"] <= 1.0 and (tmp_path / "froc.png").is_file()
    assert json.loads((tmp_path / "detect" / "report.json").read_text())["scans"][0]["nodules"] is not None
