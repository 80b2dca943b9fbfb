"""The MONAI Deploy application (``python -m nodule_bundle.apps.deploy_app``), run in its own environment
(``.ci/deploy-venv`` builds ``.venv-deploy``; or set ``NODULE_DEPLOY_VENV``) on a folder holding a phantom
CT series beside an MR image: the same report, DICOM SEG and SR as ``configs/inference.json`` writes for
that series. Skipped without that environment, except under CI, where it fails."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from bundle_run import ROOT, monai_bundle_run
from nodule_bundle.reports.dicom import SEG_NAME, SR_NAME

DEPLOY_VENV = Path(os.environ.get("NODULE_DEPLOY_VENV", ROOT / ".venv-deploy"))
if not (DEPLOY_VENV / "bin" / "python").is_file():
    if os.environ.get("CI"):
        raise RuntimeError(f"{DEPLOY_VENV}: MONAI Deploy environment missing (.ci/deploy-venv builds it)")
    pytest.skip(f"no MONAI Deploy environment at {DEPLOY_VENV} (run .ci/deploy-venv)", allow_module_level=True)


def _holoscan_stack() -> None:
    """Holoscan asks for a 32 MB stack (it warns below that)."""
    resource.setrlimit(resource.RLIMIT_STACK, (32 * 2**20, resource.getrlimit(resource.RLIMIT_STACK)[1]))


def _findings(sr: hd.sr.Comprehensive3DSR) -> dict[str, dict]:
    """Tracking identifier -> the group's segment number, measurements and evaluations."""
    found = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        found[group.tracking_identifier] = {
            "segment": group.referenced_segment.referenced_segment_numbers,
            "measurements": sorted((m.name.meaning, round(m.value, 4), m.unit.value) for m in group.get_measurements()),
            "evaluations": sorted((e.name.meaning, e.value.meaning) for e in group.get_qualitative_evaluations()),
        }
    (count,) = sr.content.get_image_measurement_groups()
    found["count"] = {"measurements": [(m.name.meaning, m.value) for m in count.get_measurements()]}
    return found


def test_the_deploy_app_writes_the_bundles_report_seg_and_sr(trained, phantom_dir, test_scan, tmp_path):
    """A site's own bundle root ($NODULE_BUNDLE_ROOT): here one whose inference reports every candidate
    (the briefly trained test model rejects them all at the bundle's 0.5)."""
    uid = test_scan[0]
    bundle_root = tmp_path / "bundle_root"
    shutil.copytree(ROOT / "configs", bundle_root / "configs")
    config = json.loads((bundle_root / "configs" / "inference.json").read_text())
    (bundle_root / "configs" / "inference.json").write_text(json.dumps({**config, "min_nodule_probability": 0.0}))
    study = tmp_path / "input"
    shutil.copytree(phantom_dir / "dicom" / uid, study / "ct")
    shutil.copy(get_testdata_file("MR_small.dcm"), study / "mr.dcm")  # another series, another study: not CT, passed by
    app_out = tmp_path / "app"
    command = [str(DEPLOY_VENV / "bin" / "python"), "-m", "nodule_bundle.apps.deploy_app", "-i", str(study), "-o", str(app_out), "-m", str(trained / "models")]
    env = {**os.environ, "NODULE_BUNDLE_ROOT": str(bundle_root)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, preexec_fn=_holoscan_stack)
    assert result.returncode == 0, result.stderr[-4000:]
    bundle_out = tmp_path / "bundle"
    result = monai_bundle_run(["inference"], image=study / "ct", seriesuid=uid, ckpt_path=trained / "models" / "model.pt",
                              output_dir=bundle_out, min_nodule_probability=0.0)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    assert {SEG_NAME, SR_NAME, "report.json", "nodule_labels.nii.gz"} <= {p.name for p in app_out.iterdir()}
    app_report, bundle_report = (json.loads((out / "report.json").read_text()) for out in (app_out, bundle_out))
    assert app_report == bundle_report and app_report["scans"][0]["nodules"]  # the same nodules, found and measured alike
    app_seg, bundle_seg = (hd.seg.segread(out / SEG_NAME) for out in (app_out, bundle_out))
    assert app_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert [(s.SegmentNumber, s.SegmentLabel, s.TrackingID) for s in app_seg.SegmentSequence] == [
        (s.SegmentNumber, s.SegmentLabel, s.TrackingID) for s in bundle_seg.SegmentSequence
    ]
    np.testing.assert_array_equal(app_seg.pixel_array, bundle_seg.pixel_array)
    app_sr, bundle_sr = (hd.sr.srread(out / SR_NAME) for out in (app_out, bundle_out))
    assert _findings(app_sr) == _findings(bundle_sr) and len(_findings(app_sr)) == 1 + len(app_seg.SegmentSequence)
    evidence = {i.ReferencedSOPInstanceUID for e in app_sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}  # fmt: skip
    assert app_seg.SOPInstanceUID in evidence
    validator = shutil.which("dciodvfy")
    if validator:  # CI installs it (test_report.py fails there without it)
        for name in (SEG_NAME, SR_NAME):
            checked = subprocess.run([validator, str(app_out / name)], capture_output=True, text=True, timeout=120)
            assert not [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")], name
