"""Every case of the bad-input corpus (tests/bad_inputs.py) through the CLI and through
``python -m monai.bundle run``: a non-zero exit, one clear line naming the file and the problem, no
traceback from the CLI, no output left behind, inputs unchanged. The summary line at the end of the
run counts them (tests/conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs import CASES, RESULTS, Case, Good, snapshot
from bundle_run import ROOT
from preloaded_runs import preloaded_bundle_runs

from nodule_bundle.apps.cli import main

assert len(CASES) >= 30


@pytest.fixture(scope="module")
def good(phantom_dir, trained, test_scan) -> Good:
    uid, _, csv_path = test_scan
    return Good(
        nifti=phantom_dir / "images" / f"{uid}.nii.gz", mhd=phantom_dir / "mhd" / f"{uid}.mhd", dicom=phantom_dir / "dicom" / uid,
        nodules=csv_path, model=trained / "models" / "model.pt", datalist=phantom_dir / "datalist.json", dataset_dir=phantom_dir,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cases(good, tmp_path_factory) -> dict[str, tuple[Case, Path]]:
    built = {}
    for name, build in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        built[name] = (build(folder, good), folder)
    return built


def _bundle_command(c: Case, folder: Path) -> list[str]:
    """What follows ``python -m monai.bundle`` for the case, its outputs under ``folder/out_bundle``."""
    out = folder / "out_bundle"
    base = ["run", "--meta_file", "configs/metadata.json"]
    if c.workflow == "train":
        return [*base, "--config_file", "configs/train.json", "--datalist", str(c.datalist), "--dataset_dir", str(c.dataset_dir),
                "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "eval"), "--epochs", "1", "--num_workers", "0"]  # fmt: skip
    return [*base, "--config_file", "configs/inference.json", "--image", str(c.image), "--nodules", str(c.nodules),
            "--ckpt_path", str(c.model), "--output_dir", str(out)]  # fmt: skip


def _cli_args(c: Case, out: Path) -> list[str]:
    if c.workflow == "train":
        return ["train", "--datalist", str(c.datalist), "--dataset-dir", str(c.dataset_dir), "--out", str(out), "--epochs", "1", "--num-workers", "0"]
    return ["classify", "--image", str(c.image), "--nodules", str(c.nodules), "--model", str(c.model), "--out", str(out)]


@pytest.fixture(scope="module")
def bundle_runs(cases) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict]]:
    """Every case through ``python -m monai.bundle run`` (one forked process each, two at a time,
    after one shared import: tests/preloaded_runs.py): (result, inputs before, after)."""
    names = sorted(cases)
    before = {name: snapshot(cases[name][1]) for name in names}
    results = preloaded_bundle_runs([_bundle_command(*cases[name]) for name in names])
    return {name: (result, before[name], snapshot(cases[name][1])) for name, result in zip(names, results)}


def test_a_preloaded_run_is_the_real_process(tmp_path):
    """The forked runs answer as ``python -m monai.bundle run`` itself: same exit status, same error."""
    missing = Case("missing", "", image=tmp_path / "missing.nii.gz", nodules=tmp_path / "nodules.csv", model=tmp_path / "model.pt")
    args = _bundle_command(missing, tmp_path / "out")
    real = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    forked = preloaded_bundle_runs([args])[0]
    assert real.returncode == forked.returncode == 1
    assert _errors(real) == _errors(forked)
    assert f"{missing.image}: image not found" in _errors(forked)[0]


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    """The traceback's own error lines."""
    return [line for line in result.stderr.splitlines() if re.match(r"^[\w.]*(Error|Exception): ", line)]


def _record(name: str, runner: str, clear: bool, crashed: bool, left: list[str]) -> None:
    RESULTS.append({"case": name, "runner": runner, "clear": clear, "crash": crashed, "left_behind": len(left)})


def _left_behind(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.is_file()] if out.exists() else []


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_refuses_with_one_clear_line(name, cases, capsys):
    c, folder = cases[name]
    before, out = snapshot(folder), folder / "out_cli"
    try:
        status = main(_cli_args(c, out))
        crashed = False
    except BaseException as err:  # a traceback instead of a message: a crash
        status, crashed = repr(err), True
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nodule-bundle: error:")]
    clear = status == 2 and len(lines) == 1 and str(c.named) in lines[0] and bool(re.search(c.expect, lines[0], re.IGNORECASE))
    left = _left_behind(out)
    _record(name, "cli", clear, crashed, left)
    assert not crashed, f"{name}: the CLI raised {status}"
    assert clear, f"{name}: exit {status}; error lines {lines or err[-1500:]}"
    assert "Traceback" not in err
    assert not left, f"{name}: left {left}"
    assert snapshot(folder) == {k: v for k, v in before.items()}, f"{name}: an input changed"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundle_run_refuses_naming_the_file(name, cases, bundle_runs):
    c, folder = cases[name]
    result, before, after = bundle_runs[name]
    errors = _errors(result)
    line = next((line for line in errors if str(c.named) in line and re.search(c.expect, line, re.IGNORECASE)), None)
    crashed = result.returncode == 0 or line is None
    left = _left_behind(folder / "out_bundle")
    _record(name, "monai.bundle run", line is not None and result.returncode != 0, crashed, left)
    assert result.returncode != 0, f"{name}: python -m monai.bundle run succeeded"
    assert line is not None, f"{name}: no error line names {c.named} with /{c.expect}/: {errors}"
    assert not left, f"{name}: left {left}"
    assert after == before, f"{name}: an input changed"
