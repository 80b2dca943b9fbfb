"""``nodule-bundle`` commands and their one-line errors on bad input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nodule_bundle.apps.cli import main
from nodule_bundle.network.networks import MultiTaskNoduleNet


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(MultiTaskNoduleNet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def scan(phantom_dir, datalist):
    item = datalist["training"][0]
    return phantom_dir / item["image"], item


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_classify_writes_a_report_and_leaves_inputs_alone(scan, model, tmp_path, capsys):
    image, item = scan
    nodules = _csv(tmp_path / "n.csv", "coordX,coordY,coordZ\n" + ",".join(map(str, item["center_world_mm"])) + "\n")
    digests = (_digest(image), _digest(nodules))
    assert main(["classify", "--image", str(image), "--nodules", str(nodules), "--model", str(model), "--out", str(tmp_path / "out")]) == 0
    assert (_digest(image), _digest(nodules)) == digests
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["scans"][0]["nodules"]) == 1
    assert "P(malig)" in capsys.readouterr().out


def _outside(item) -> str:
    x, y, z = item["center_world_mm"]
    return f"coordX,coordY,coordZ\n{x},{y},{z + 5000}\n"


@pytest.mark.parametrize(
    "case, csv_text, image_name, expected",
    [
        ("missing image", "coordX,coordY,coordZ\n0,0,0\n", "absent.nii.gz", r"absent\.nii\.gz: image not found"),
        ("unreadable image", "coordX,coordY,coordZ\n0,0,0\n", "garbage.nii.gz", r"garbage\.nii\.gz: cannot read image"),
        ("2D image", "coordX,coordY,coordZ\n0,0,0\n", "slice.nii.gz", r"slice\.nii\.gz: expected one 3D volume"),
        ("csv missing columns", "x,y,z\n1,2,3\n", None, r"n\.csv: missing column\(s\) coordX, coordY, coordZ"),
        ("csv non-numeric", "coordX,coordY,coordZ\n1,abc,3\n", None, r"n\.csv: row 2: column 'coordY' is not a number"),
        ("empty nodule list", "coordX,coordY,coordZ\n", None, r"n\.csv: no nodules"),
        ("nodule outside the volume", None, None, r"\.nii\.gz: nodule at world .* is outside the image"),
    ],
)
def test_bad_input_gives_one_clear_line(case, csv_text, image_name, expected, scan, model, tmp_path, capsys):
    image, item = scan
    if image_name == "garbage.nii.gz":
        (tmp_path / image_name).write_bytes(b"this is not a NIfTI file")
    if image_name == "slice.nii.gz":
        nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), tmp_path / image_name)
    target = tmp_path / image_name if image_name else image
    nodules = _csv(tmp_path / "n.csv", csv_text if csv_text is not None else _outside(item))
    code = main(["classify", "--image", str(target), "--nodules", str(nodules), "--model", str(model), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2, case
    assert len(err.splitlines()) == 1 and err.startswith("nodule-bundle: error: ")
    assert re.search(expected, err), err
    assert not (tmp_path / "out" / "report.json").exists()  # no partial output


def test_missing_model_is_reported(scan, tmp_path, capsys):
    image, item = scan
    nodules = _csv(tmp_path / "n.csv", "coordX,coordY,coordZ\n0,0,0\n")
    assert main(["classify", "--image", str(image), "--nodules", str(nodules), "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2
    assert "none.pt: model weights not found" in capsys.readouterr().err


def test_console_script_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nodule_bundle.apps.cli", "synth", "--out", str(tmp_path), "--scans", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "--scans: must be a positive integer" in result.stderr


def test_synth_command_is_deterministic(tmp_path):
    args = ["synth", "--scans", "1", "--seed", "11", "--fov-mm", "100", "90", "50", "--max-nodules", "8", "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0 and main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "annotations.csv").read_text() == (tmp_path / "b" / "annotations.csv").read_text()
    (img_a,) = (tmp_path / "a" / "images").iterdir()
    a, b = nib.load(img_a), nib.load(tmp_path / "b" / "images" / img_a.name)
    assert (a.get_fdata() == b.get_fdata()).all() and (a.affine == b.affine).all()
