"""Dataset converters on phantom data written in the real layouts: LUNA16 (subset folders of .mhd,
annotations.csv, candidates_V2.csv) and a site's own mix of NIfTI files and DICOM directories."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from bundle_run import monai_bundle_run
from nodule_bundle.apps.cli import main
from nodule_bundle.data.datalist import load_nodule_datalist

SPLITS = ("training", "validation", "test")


def _annotations(phantom_dir: Path) -> list[dict]:
    with open(phantom_dir / "annotations.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def luna16_root(phantom_dir, tmp_path_factory) -> Path:
    """The phantom's MHD scans as LUNA16 ships them: scan k in subset<k>, LUNA16 columns only."""
    root = tmp_path_factory.mktemp("luna16")
    rows = _annotations(phantom_dir)
    uids = sorted({r["seriesuid"] for r in rows})
    for k, uid in enumerate(uids):
        (root / f"subset{k}").mkdir()
        for suffix in (".mhd", ".raw"):
            shutil.copy(phantom_dir / "mhd" / f"{uid}{suffix}", root / f"subset{k}" / f"{uid}{suffix}")
    gone = {**rows[0], "seriesuid": "1.3.6.1.4.1.14519.5.2.1.6279.6001.999", "diameter_mm": "7.5"}  # not downloaded
    _write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], [*rows, gone])
    candidates = [{**r, "class": 1} for r in rows]
    for uid in uids:  # non-nodule candidates: shifted 30 mm from the first nodule of each scan
        first = next(r for r in rows if r["seriesuid"] == uid)
        candidates += [{**first, "coordX": float(first["coordX"]) + dx, "class": 0} for dx in (-30, -20, 20)]
    _write_csv(root / "candidates_V2.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], candidates)
    return root


def test_luna16_subsets_become_folds_and_nodules_have_sizes_only(luna16_root, phantom_dir, capsys):
    out = luna16_root / "datalist.json"
    args = ["convert", "luna16", "--root", str(luna16_root), "--out", str(out), "--candidates",
            str(luna16_root / "candidates_V2.csv"), "--negatives-per-scan", "2", "--val-fold", "2", "--test-fold", "3"]  # fmt: skip
    with pytest.warns(UserWarning, match="skipped 1 annotated scan"):
        assert main(args) == 0
    assert "--dataset_dir" in capsys.readouterr().out
    datalist = json.loads(out.read_text())
    truth = {(r["seriesuid"], round(float(r["coordX"]), 3)): float(r["diameter_mm"]) for r in _annotations(phantom_dir)}
    for split, folds in zip(SPLITS, ({0, 1}, {2}, {3})):
        items = datalist[split]
        assert {i["fold"] for i in items} == folds
        nodules = [i for i in items if i["is_nodule"] == 1]
        assert all(i["malignancy"] is None for i in items)  # LUNA16 has no malignancy: masked, not faked
        for item in nodules:
            assert item["diameter_mm"] == truth[item["seriesuid"], round(item["center_world_mm"][0], 3)]
            assert item["image"] == f"subset{item['fold']}/{item['seriesuid']}.mhd"
        negatives = [i for i in items if i["is_nodule"] == 0]
        assert len(negatives) == 2 * len(folds) and all(i["diameter_mm"] is None for i in negatives)
    n_nodules = sum(i["is_nodule"] for s in SPLITS for i in datalist[s])
    assert n_nodules == len(truth)
    assert load_nodule_datalist(out, "training", luna16_root)  # paths resolve against the LUNA16 root


@pytest.mark.slow
def test_a_luna16_datalist_trains_the_size_heads_through_the_bundle(luna16_root, tmp_path):
    out = luna16_root / "size_only.json"
    assert main(["convert", "luna16", "--root", str(luna16_root), "--out", str(out), "--val-fold", "2", "--test-fold", "3"]) == 0
    result = monai_bundle_run(
        ["train"], datalist=out, dataset_dir=luna16_root, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval",
        epochs=1, num_workers=0,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()  # saved on the size metrics; malignancy AUC has no labels


def test_luna16_layout_errors_are_named(tmp_path, capsys):
    assert main(["convert", "luna16", "--root", str(tmp_path), "--out", str(tmp_path / "d.json")]) == 2
    assert "no subset0..subset9 folders" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


@pytest.fixture(scope="module")
def site(phantom_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A hospital folder: two scans as NIfTI in nested folders, two as DICOM directories."""
    images = tmp_path_factory.mktemp("site")
    rows = _annotations(phantom_dir)
    uids = sorted({r["seriesuid"] for r in rows})
    for k, uid in enumerate(uids):
        if k < 2:
            (images / "nifti" / f"batch{k}").mkdir(parents=True)
            shutil.copy(phantom_dir / "images" / f"{uid}.nii.gz", images / "nifti" / f"batch{k}" / f"{uid}.nii.gz")
        else:
            shutil.copytree(phantom_dir / "dicom" / uid, images / "pacs" / f"study{k}")
    return images, rows


def test_site_csv_with_a_split_column_finds_files_and_dicom_series(site, tmp_path):
    images, rows = site
    uids = sorted({r["seriesuid"] for r in rows})
    split = dict(zip(uids, ["training", "training", "validation", "test"]))
    annotated = [{**r, "split": split[r["seriesuid"]], "spiculation": 1 + k % 5, "lobulation": "" if k % 2 else 2.5} for k, r in enumerate(rows)]
    annotated.append({**rows[0], "seriesuid": "2.25.404", "split": "training"})  # a scan the site does not have
    columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy", "split", "spiculation", "lobulation"]
    csv_path = _write_csv(tmp_path / "site.csv", columns, annotated)
    out = tmp_path / "datalist.json"
    with pytest.warns(UserWarning, match="skipped 1 series"):
        assert main(["convert", "csv", "--images", str(images), "--annotations", str(csv_path), "--out", str(out)]) == 0
    datalist = json.loads(out.read_text())
    for name in SPLITS:
        assert {i["seriesuid"] for i in datalist[name]} == {u for u, s in split.items() if s == name}
    dicom_items = [i for i in datalist["validation"] + datalist["test"]]
    assert all(i["image"].startswith("pacs/study") for i in dicom_items)  # found by the series UID in the headers
    assert {i["malignancy"] for i in datalist["training"]} <= {0, 1}
    items = [i for name in SPLITS for i in datalist[name]]
    assert sorted(i["spiculation"] for i in items) == sorted(float(1 + k % 5) for k in range(len(rows)))  # the readers' ratings carried
    assert sum(math.isnan(i["lobulation"]) for i in items) == len(rows) // 2 and all("margin" not in i for i in items)  # missing: NaN
    assert len(load_nodule_datalist(out, "test", images)) == sum(1 for r in rows if split[r["seriesuid"]] == "test")


def test_site_csv_with_folds_and_without_labels(site, tmp_path):
    images, rows = site
    uids = sorted({r["seriesuid"] for r in rows})
    fold = {u: k % 3 for k, u in enumerate(uids)}
    csv_path = _write_csv(tmp_path / "site.csv", ["seriesuid", "coordX", "coordY", "coordZ", "fold"], [{**r, "fold": fold[r["seriesuid"]]} for r in rows])
    out = tmp_path / "datalist.json"
    args = ["convert", "csv", "--images", str(images), "--annotations", str(csv_path), "--out", str(out), "--val-fold", "1", "--test-fold", "2"]
    assert main(args) == 0
    datalist = json.loads(out.read_text())
    assert {i["fold"] for i in datalist["training"]} == {0} and {i["fold"] for i in datalist["test"]} == {2}
    items = [i for s in SPLITS for i in datalist[s]]
    assert all(i["diameter_mm"] is None and i["malignancy"] is None for i in items)  # nothing invented
    assert len(items) == len(rows)


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("split", ["training", "train"], "split must be one of"),
        ("split", ["training", "test"], "is in split 'training' on an earlier row, 'test' here"),
        ("fold", ["1", "x"], "fold must be an integer"),
    ("spiculation", ["2", "very"], "column 'spiculation' is not a number"),
    ],
)
def test_site_csv_errors_name_the_row(site, tmp_path, capsys, column, values, message):
    images, rows = site
    uid = rows[0]["seriesuid"]
    same_scan = [r for r in rows if r["seriesuid"] == uid][:2]
    csv_path = _write_csv(
        tmp_path / "bad.csv", ["seriesuid", "coordX", "coordY", "coordZ", column], [{**r, column: v} for r, v in zip(same_scan, values)]
    )
    out = tmp_path / "d.json"
    assert main(["convert", "csv", "--images", str(images), "--annotations", str(csv_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{csv_path}: row 3" in err and message in err
    assert not out.exists()
