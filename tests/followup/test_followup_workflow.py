"""``nodule-bundle followup`` (configs/followup.json) on a phantom patient's DICOM series: the study
dates read from DICOM, every nodule paired with itself, other patients refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import highdicom as hd
import pytest

from bundle_run import monai_bundle_run
from conftest import SMALL
from debian_tools import dciodvfy_errors
from nodule_bundle.apps.cli import main
from nodule_bundle.data.followup_phantom import FollowupConfig, schedule
from nodule_bundle.data.synth import write_followup_dataset
from nodule_bundle.reports.dicom import SEG_NAME, SR_NAME, segment_tracking_uids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("followups")
    write_followup_dataset(out, patients=2, timepoints=2, seed=3, formats=("dicom",), cfg=SMALL, workers=1, negatives_per_scan=0)
    return out


def _scans(series: Path) -> dict[tuple[str, int], str]:
    with (series / "followups.csv").open() as f:
        return {(row["patient_id"], int(row["timepoint"])): row["seriesuid"] for row in csv.DictReader(f)}


def _nodules(series: Path, seriesuid: str, path: Path) -> tuple[Path, dict[str, str]]:
    """A CSV of the scan's nodules (as a reader's list) and each one's track by its row."""
    with (series / "annotations.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["seriesuid"] == seriesuid]
    path.write_text("coordX,coordY,coordZ\n" + "".join(f"{r['coordX']},{r['coordY']},{r['coordZ']}\n" for r in rows))
    return path, [r["track_id"] for r in rows]


def test_followup_pairs_each_nodule_with_itself_and_dates_the_change(series, trained, tmp_path, capsys):
    scans = _scans(series)
    patient = sorted({p for p, _ in scans})[0]
    prior_uid, current_uid = scans[(patient, 0)], scans[(patient, 1)]
    prior_csv, prior_tracks = _nodules(series, prior_uid, tmp_path / "prior.csv")
    current_csv, current_tracks = _nodules(series, current_uid, tmp_path / "current.csv")
    out = tmp_path / "out"
    assert main(["followup", "--prior", str(series / "dicom" / prior_uid), "--current", str(series / "dicom" / current_uid), "--prior-nodules", str(prior_csv),
                 "--current-nodules", str(current_csv), "--model", str(trained / "models" / "model.pt"), "--out", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "followup.json").read_text())
    days = [d for _, d in schedule(3, 0, FollowupConfig(timepoints=2))]
    assert result["interval_days"] == days[1] - days[0] and result["prior"]["study_date"] < result["current"]["study_date"]
    prior_ids = {n["nodule_id"]: track for n, track in zip(json.loads((out / "prior" / "report.json").read_text())["scans"][0]["nodules"], prior_tracks)}
    current_ids = {n["nodule_id"]: track for n, track in zip(json.loads((out / "current" / "report.json").read_text())["scans"][0]["nodules"], current_tracks)}
    pairs = [(prior_ids[r["prior_nodule_id"]], current_ids[r["current_nodule_id"]]) for r in result["nodules"] if r["prior_nodule_id"] and r["current_nodule_id"]]
    assert len(pairs) == len(set(prior_tracks) & set(current_tracks)) >= 3 and all(a == b for a, b in pairs)
    assert {r["status"] for r in result["nodules"]} <= {"new", "growing", "stable", "shrinking", "resolved"}
    assert all(r["lung_rads_category"] for r in result["nodules"] if r["current"]) and (out / "followup.png").stat().st_size > 1000
    assert "Lung-RADS" in capsys.readouterr().out
    # the current scan's SEG and SR again: each nodule seen before under the prior finding's tracking UID
    for name in (SEG_NAME, SR_NAME):
        assert not dciodvfy_errors(out / name), name
    prior_uids, current_uids = segment_tracking_uids(out / "prior"), segment_tracking_uids(out)
    labels = {side: {n["nodule_id"]: n["label_value"] for n in json.loads((out / side / "report.json").read_text())["scans"][0]["nodules"]} for side in ("prior", "current")}
    paired = [(labels["prior"][r["prior_nodule_id"]], labels["current"][r["current_nodule_id"]]) for r in result["nodules"] if r["prior_nodule_id"] and r["current_nodule_id"]]
    assert paired and all(current_uids[b] == prior_uids[a] for a, b in paired)
    new = [labels["current"][r["current_nodule_id"]] for r in result["nodules"] if r["status"] == "new"]
    assert not {current_uids[b] for b in new} & set(prior_uids.values())
    sr = hd.sr.srread(out / SR_NAME)
    assert "Change since the prior scan" in str(sr.ContentSequence)
    # the same comparison as a bundle workflow, from the two reports, the way users run configs
    run = monai_bundle_run(["followup"], prior_image=series / "dicom" / prior_uid, current_image=series / "dicom" / current_uid,
                           prior_report=out / "prior" / "report.json", current_report=out / "current" / "report.json", output_dir=tmp_path / "again")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "followup.json").read_text())["nodules"] == result["nodules"]


def test_followup_refuses_two_patients_by_their_dicom_ids(series, trained, tmp_path, capsys):
    scans = _scans(series)
    first, second = sorted({p for p, _ in scans})
    prior, current = str(series / "dicom" / scans[(first, 0)]), str(series / "dicom" / scans[(second, 1)])
    prior_csv, _ = _nodules(series, scans[(first, 0)], tmp_path / "prior.csv")
    current_csv, _ = _nodules(series, scans[(second, 1)], tmp_path / "current.csv")
    assert main(["followup", "--prior", prior, "--current", current, "--prior-nodules", str(prior_csv), "--current-nodules", str(current_csv),
                 "--model", str(trained / "models" / "model.pt"), "--out", str(tmp_path / "out")]) != 0  # fmt: skip
    assert f"{prior} -> {current}: the scans are of two patients" in capsys.readouterr().err
