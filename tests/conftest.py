"""Shared fixtures, made once per test session: a small phantom dataset, a bundle trained on it briefly,
and one test scan with its nodule list."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bundle_run import monai_bundle_run
from nodule_bundle.data.phantom import PhantomConfig
from nodule_bundle.data.synth import write_phantom_dataset

SMALL = PhantomConfig(fov_mm=(130.0, 110.0, 70.0), nodules_per_scan=(8, 12))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Four small scans in all three formats, with annotations.csv and datalist.json."""
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, scans=4, seed=7, formats=("nifti", "mhd", "dicom"), cfg=SMALL, workers=1)
    return out


@pytest.fixture(scope="session")
def datalist(phantom_dir) -> dict:
    return json.loads((phantom_dir / "datalist.json").read_text())


@pytest.fixture(scope="session")
def trained(phantom_dir, tmp_path_factory) -> Path:
    """A bundle trained for 2 epochs on the phantom; returns its output root (models/, eval/)."""
    out = tmp_path_factory.mktemp("bundle")
    result = monai_bundle_run(["train"], dataset_dir=phantom_dir, ckpt_dir=out / "models", output_dir=out / "eval", epochs=2, num_workers=0)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def test_scan(phantom_dir, datalist, tmp_path_factory):
    items = datalist["test"]
    uid = items[0]["seriesuid"]
    rows = [i for i in items if i["seriesuid"] == uid and i.get("is_nodule", 1)]
    csv_path = tmp_path_factory.mktemp("nodules") / "nodules.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "nodule_id"])
        for r in rows:
            writer.writerow([uid, *r["center_world_mm"], r["nodule_id"]])
    return uid, rows, csv_path


#: Fixtures that train a network, run whole bundle workflows or start a server: a test that uses one
#: (directly or through another fixture) is marked ``slow`` (``pytest -m "not slow"`` leaves it out).
SLOW_FIXTURES = {"trained", "orthanc", "server", "federation", "segmenter_run", "bundle_runs", "exported", "reports", "report_dirs", "service"}
#: Modules whose tests train or start servers themselves.
SLOW_MODULES = {"test_demo", "test_distributed", "test_federated", "test_deploy_app", "test_label_app", "test_pacs"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter) -> None:
    """The bad-input corpus in one line: cases tried, clear errors, crashes, files left behind."""
    from bad_inputs import RESULTS

    if RESULTS:
        cases = {r["case"] for r in RESULTS}
        terminalreporter.write_line(
            f"bad-input corpus: {len(cases)} cases tried ({len(RESULTS)} runs through the CLI and python -m monai.bundle run), "
            f"{sum(r['clear'] for r in RESULTS)} clear errors, {sum(r['crash'] for r in RESULTS)} crashes, "
            f"{sum(r['left_behind'] for r in RESULTS)} files left behind"
        )
