"""What a radiologist sees: report fields, pictures, the label map over the scan, the HTML page in a
real headless browser, and no patient identity unless asked for."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import highdicom as hd
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from pydicom.sr.codedict import codes
from scipy import ndimage as ndi

from bundle_run import bundle_args, monai_bundle_run
from preloaded_runs import preloaded_bundle_runs
from debian_tools import dciodvfy_errors, debian_tool
from dicom_helpers import edit
from nodule_bundle.reports.writer import NoduleReportWriter
from nodule_bundle.core.nodule import lung_rads_category, texture_from_measurement
from nodule_bundle.reports.dicom import SEG_NAME, SR_NAME, frames_from_label_map, read_source_series, write_dicom_report
from nodule_bundle.reports.html import render_report_html
from nodule_bundle.reports.pictures import nodule_views, write_montage
from nodule_bundle.reports.report import REPORTED_DECIMALS
from nodule_bundle.measuring.transforms import label_map
from nodule_bundle.reading.load import LoadCTImaged
from nodule_bundle.detection.transforms import PLAUSIBLE_LUNG_ML

PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "19500101"}


@pytest.mark.parametrize(
    "texture, mean, solid, category",
    [("solid", 5.9, 5.9, "2"), ("solid", 6.0, 6.0, "3"), ("solid", 8.0, 8.0, "4A"), ("solid", 15.0, 15.0, "4B"),
     ("part-solid", 5.0, 3.0, "2"), ("part-solid", 10.0, 5.0, "3"), ("part-solid", 10.0, 6.5, "4A"), ("part-solid", 12.0, 8.0, "4B"),
     ("ground-glass", 29.0, 0.0, "2"), ("ground-glass", 30.0, 0.0, "3")],
)  # fmt: skip
def test_lung_rads_category_follows_the_v2022_size_rules(texture, mean, solid, category):
    assert lung_rads_category(texture, mean, solid) == category


def test_texture_from_the_mask():
    assert texture_from_measurement(8.0, 7.5) == "solid"
    assert texture_from_measurement(8.0, 3.0) == "part-solid"
    assert texture_from_measurement(8.0, 0.0) == "ground-glass"
    with pytest.raises(ValueError, match="texture"):
        lung_rads_category("calcified", 5.0)


def _crop_with_marker() -> MetaTensor:
    """A RAS crop: a nodule mask at the centre and a bright marker towards the patient's right,
    anterior and superior (high x, y and z in RAS)."""
    hu = torch.full((40, 40, 40), -900, dtype=torch.int16)
    hu[30:34, 30:34, 30:34] = 300
    mask = torch.zeros_like(hu)
    mask[17:23, 17:23, 17:23] = 1
    return MetaTensor(torch.stack([hu, mask]), affine=torch.diag(torch.tensor([0.6, 0.6, 0.6, 1.0], dtype=torch.float64)))


def test_views_are_shown_the_radiological_way_with_the_mask_outlined():
    views = nodule_views(_crop_with_marker(), zoom=2)
    assert {k: v.shape for k, v in views.items()} == {p: (80, 80, 3) for p in ("axial", "coronal", "sagittal")}
    for plane in views:  # each view goes through the mask's centre, where the marker is not
        assert not (views[plane][..., 2] > 200).any()
    crop = _crop_with_marker()
    crop[0, 30:34, 30:34, 17:23] = 300  # a marker in the mask's axial slices: right, anterior
    axial = nodule_views(crop, zoom=1)["axial"]
    rows, cols = np.argwhere(axial[..., 2] > 200).T
    assert rows.mean() < 20 and cols.mean() < 20  # anterior at the top, the patient's right on the left
    outline = np.all(axial == (255, 196, 0), axis=-1)
    assert outline.any() and not outline[20, 20]  # a contour, not a filled mask


def test_montage_shows_every_view_under_its_caption(tmp_path):
    axial = nodule_views(_crop_with_marker(), zoom=2)["axial"]
    tiles = [(f"n{k}\n5.0 mm P(malig) 0.{k}", axial) for k in range(7)]
    write_montage(tmp_path / "nodules.png", tiles, title="scan-1: 7 nodule(s), axial", columns=5)
    with Image.open(tmp_path / "nodules.png") as png:
        page = np.asarray(png.convert("RGB"))
    outline = np.all(page == (255, 196, 0), axis=-1)
    labels, count = ndi.label(outline.any(axis=0))  # columns holding an outline
    assert count == 5  # five tiles to a row
    labels, count = ndi.label(outline.any(axis=1))
    assert count == 2  # seven tiles: two rows
    write_montage(tmp_path / "bare.png", [("\n", rgb) for _, rgb in tiles], title="", columns=5)  # two empty caption lines
    with Image.open(tmp_path / "bare.png") as png:
        bare = np.asarray(png.convert("RGB"))
    assert bare.shape == page.shape  # the same layout, without words
    assert (np.all(page < 100, axis=-1) & ~np.all(bare < 100, axis=-1)).sum() > 200  # title and captions are drawn
    empty = tmp_path / "empty.png"
    write_montage(empty, [], title="scan-2: 0 nodule(s), axial")
    with Image.open(empty) as png:
        assert (np.asarray(png.convert("L")) < 100).sum() > 100  # says so in words


def test_label_map_puts_each_mask_where_its_crop_came_from():
    scan_affine = torch.tensor([[-0.7, 0, 0, 100.0], [0, -0.7, 0, 50.0], [0, 0, 2.0, -200.0], [0, 0, 0, 1]], dtype=torch.float64)
    crop_affine = torch.diag(torch.tensor([0.6, 0.6, 0.6, 1.0], dtype=torch.float64))
    centre_world = np.array([60.0, 20.0, -150.0])
    crop_affine[:3, 3] = torch.as_tensor(centre_world - 0.6 * 19.5)
    mask = torch.zeros((2, 40, 40, 40), dtype=torch.int16)
    mask[1, 15:25, 15:25, 15:25] = 1  # a 6 mm cube about the centre
    label = label_map([MetaTensor(mask, affine=crop_affine)], (120, 100, 60), scan_affine)
    assert label.shape == (1, 120, 100, 60) and label.dtype == torch.uint8
    centre_voxel = np.rint(np.linalg.solve(scan_affine.numpy(), [*centre_world, 1.0])[:3]).astype(int)
    assert label[(0, *centre_voxel)] == 1
    assert 0.5 * 216 < float(label.sum()) * 0.7 * 0.7 * 2.0 < 2.0 * 216  # about the cube's 216 mm3


def test_html_shows_the_rating_heads_answers_or_a_dash():
    nodule = {"nodule_id": "n1", "center_world_mm": [1.0, 2.0, 3.0], "diameter_mm": 9.0, "size_band_name": "8-<15 mm",
              "malignancy_probability": 0.7, "nodule_probability": 0.9, "texture": "solid", "semantic_ratings": None}  # fmt: skip
    rated = {**nodule, "nodule_id": "n2", "semantic_ratings": {"spiculation": 4.26, "lobulation": 3.0, "calcification": 6.0}}
    page = render_report_html({"seriesuid": "s", "nodules": [nodule, rated]}, {}, {"name": "b", "version": "1"})
    row = page[page.index('id="row-n2"'):]
    assert "4.3 · 3.0 · 6.0" in row[: row.index("</tr>")]
    row = page[page.index('id="row-n1"'):]
    assert "4.3" not in row[: row.index("</tr>")] and row[: row.index("</tr>")].endswith("<td>–</td>")


def test_html_says_what_the_search_saw_and_warns_when_it_could_not_work():
    model = {"name": "b", "version": "1"}
    searched = render_report_html({"seriesuid": "s", "detection": {"lung_volume_ml": 4210, "candidates": 46}, "nodules": []}, {}, model)
    assert "a lung mask of 4,210 ml, 46 candidate(s)" in searched and 'class="warning"' not in searched
    warned = {"seriesuid": "s", "detection": {"lung_volume_ml": 0, "candidates": 0, "warning": "no lung found <here>"}, "nodules": []}
    page = render_report_html(warned, {}, model)
    assert '<p class="warning">no lung found &lt;here&gt;</p>' in page
    given = render_report_html({"seriesuid": "s", "nodules": []}, {}, model)  # nodules given by a list: no search
    assert "Whole-scan search" not in given


def test_html_escapes_what_it_is_given():
    nodule = {"nodule_id": "<script>x</script>", "center_world_mm": [1.0, 2.0, 3.0], "diameter_mm": 5.0, "size_band_name": "<6 mm",
              "malignancy_probability": 0.1, "nodule_probability": 0.9, "texture": None}  # fmt: skip
    page = render_report_html({"seriesuid": "s&1", "nodules": [nodule]}, {}, {"name": "b", "version": "1"})
    assert "<script>" not in page and "&lt;script&gt;" in page and "s&amp;1" in page


@pytest.fixture(scope="module")
def phi_scan(phantom_dir, test_scan, tmp_path_factory) -> Path:
    """The test scan's DICOM series with a patient's name, id and birth date in every header."""
    uid = test_scan[0]
    series = tmp_path_factory.mktemp("phi") / uid
    series.mkdir()
    for path in sorted((phantom_dir / "dicom" / uid).glob("*.dcm")):
        edit(path, lambda ds: [setattr(ds, k, v) for k, v in PHI.items()], series / path.name)
    return series


@pytest.fixture(scope="module")
def report_dirs(trained, phantom_dir, test_scan, phi_scan, tmp_path_factory) -> dict[str, Path]:
    uid, _, csv_path = test_scan
    runs = {"nifti": (phantom_dir / "images" / f"{uid}.nii.gz", False), "dicom": (phi_scan, False), "dicom_phi": (phi_scan, True)}
    outputs = {name: tmp_path_factory.mktemp(f"report_{name}") for name in runs}
    results = preloaded_bundle_runs([bundle_args(["inference"], image=image, nodules=csv_path, seriesuid=uid, ckpt_path=trained / "models" / "model.pt",
                                                 output_dir=outputs[name], include_phi=include_phi) for name, (image, include_phi) in runs.items()])  # fmt: skip
    for (name, (_, include_phi)), result in zip(runs.items(), results):
        assert result.returncode == 0, result.stderr[-3000:]
        if not include_phi:  # nor in the log
            assert not any(v in result.stdout + result.stderr for v in PHI.values()), f"{name}: the log carries PHI"
    return outputs


@pytest.mark.parametrize("name", ["nifti", "dicom"])
def test_report_files_and_label_map_over_the_scan(report_dirs, phantom_dir, test_scan, name, phi_scan):
    out, uid = report_dirs[name], test_scan[0]
    dicom = {SEG_NAME, SR_NAME} if name == "dicom" else set()  # a DICOM source gets the masks and findings as DICOM too
    assert {p.name for p in out.iterdir()} == {"report.json", "report.csv", "report.html", "nodules.png", "nodule_labels.nii.gz", *dicom}
    assert (out / "nodules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (scan,) = json.loads((out / "report.json").read_text())["scans"]
    for n in scan["nodules"]:
        assert n["lung_rads_category"] in ("2", "3", "4A", "4B") and n["texture_source"] in ("measured", None)
        assert 0.0 <= n["malignancy_uncertainty"] <= 0.5
        for key, ndigits in REPORTED_DECIMALS.items():  # rounded to what is measured, not float32 noise
            assert n.get(key) is None or n[key] == round(n[key], ndigits), (key, n[key])
    assert any(n.get("measured_long_axis_mm") is not None for n in scan["nodules"])
    image = LoadCTImaged("image", ensure_channel_first=True, image_only=True)(
        {"image": str(phantom_dir / "images" / f"{uid}.nii.gz") if name == "nifti" else str(phi_scan)}
    )["image"]  # fmt: skip
    label = nib.load(out / "nodule_labels.nii.gz")
    assert label.shape == tuple(image.shape[1:])
    np.testing.assert_allclose(label.affine, image.affine.numpy(), atol=1e-3)  # same grid in world space
    values = np.asarray(label.dataobj)
    inside = [values[tuple(np.rint(n["center_voxel"]).astype(int))] == n["label_value"] for n in scan["nodules"] if "label_value" in n]
    assert len(inside) >= 0.8 * len(scan["nodules"]) and sum(inside) >= 0.8 * len(inside)
    assert set(np.unique(values)) - {0} <= {n["label_value"] for n in scan["nodules"] if "label_value" in n}


def test_dicom_seg_and_sr_are_valid_and_hold_the_reports_masks_and_numbers(report_dirs, phi_scan):
    """For a DICOM source: a SEG and a TID 1500 SR that the standard's validator passes, on the source's
    study and series, the SEG's segments the label map's nodules, the SR's numbers report.json's."""
    out = report_dirs["dicom"]
    for name in (SEG_NAME, SR_NAME):
        errors = dciodvfy_errors(out / name)
        assert not errors, f"{name}: {errors}"
    (scan,) = json.loads((out / "report.json").read_text())["scans"]
    series, sources = read_source_series(phi_scan)
    seg, sr = hd.seg.segread(out / SEG_NAME), hd.sr.srread(out / SR_NAME)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.PatientID == sources[0].PatientID
    labelled = {int(n["label_value"]): n for n in scan["nodules"] if n.get("label_value")}
    assert sorted(int(s.SegmentNumber) for s in seg.SegmentSequence) == sorted(labelled)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources], combine_segments=True, relabel=False
    )  # fmt: skip
    label = nib.load(out / "nodule_labels.nii.gz")  # each labelled voxel, found by its world position in the slices' own headers
    values = np.asarray(label.dataobj)
    voxels = np.argwhere(values > 0)
    world_lps = (np.diag([-1.0, -1.0, 1.0]) @ (label.affine[:3, :3] @ voxels.T + label.affine[:3, 3:4])).T
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    orientation = np.array([float(v) for v in sources[0].ImageOrientationPatient]).reshape(2, 3)
    row_mm, column_mm = (float(v) for v in sources[0].PixelSpacing)
    offsets = world_lps[:, None, :] - positions[None]  # [voxel, slice, 3]
    slices = np.argmin(np.abs(offsets @ np.cross(*orientation)), axis=1)
    local = offsets[np.arange(len(voxels)), slices]
    columns, rows = np.rint(local @ orientation[0] / column_mm).astype(int), np.rint(local @ orientation[1] / row_mm).astype(int)
    np.testing.assert_array_equal(pixels[slices, rows, columns], values[tuple(voxels.T)])
    assert (pixels > 0).sum() == len(voxels) and set(np.unique(pixels)) - {0} == set(labelled)
    np.testing.assert_array_equal(pixels, frames_from_label_map(out / "nodule_labels.nii.gz", series, sources[0]))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(labelled)
    names = {"measured_long_axis_mm": codes.SCT.LongAxis, "measured_short_axis_mm": codes.SCT.ShortAxis,
             "measured_mean_diameter_mm": codes.SCT.Diameter, "measured_volume_mm3": codes.SCT.Volume,
             "malignancy_probability": codes.DCM.ProbabilityOfCancer}  # fmt: skip
    for group in groups:
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = group.referenced_segment.referenced_segment_numbers
        nodule = labelled[number]
        assert group.tracking_identifier == f"nodule {nodule['nodule_id']}"
        for key, concept in names.items():
            (measurement,) = group.get_measurements(name=concept)
            assert measurement.value == pytest.approx(nodule[key], abs=1e-6), key
        (category,) = [e for e in group.get_qualitative_evaluations() if e.name.meaning.startswith("Lung-RADS")]
        assert category.value.meaning == nodule["lung_rads_category"]


def test_a_source_without_its_type_2_attributes_still_gets_a_valid_seg_and_sr(report_dirs, phi_scan, tmp_path):
    """Scanners leave out empty type 2 attributes the SEG and SR must carry: they are carried empty,
    the source files untouched."""
    series = tmp_path / "series"
    series.mkdir()
    dropped = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
    for path in sorted(phi_scan.iterdir()):
        edit(path, lambda ds: [delattr(ds, k) for k in dropped if k in ds], series / path.name)
    before = {p.name: p.read_bytes() for p in series.iterdir()}
    out = tmp_path / "report"
    out.mkdir()
    shutil.copy2(report_dirs["dicom"] / "nodule_labels.nii.gz", out)
    (scan,) = json.loads((report_dirs["dicom"] / "report.json").read_text())["scans"]
    uid = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    written = write_dicom_report(out, scan, series, uid, {"name": "lung_nodule_ct_classification", "version": "test"})
    for path in written:
        assert not dciodvfy_errors(path), path.name
    assert {p.name: p.read_bytes() for p in series.iterdir()} == before


def test_a_dicom_scan_without_nodules_gets_an_sr_that_says_so(trained, phi_scan, tmp_path):
    """No nodule found is a finding a PACS must hold too: the whole-scan path finding nothing (no
    candidate passes the score) writes an SR (no SEG) with no nodule in it and a count of zero, on
    the source's study, valid; report.json says what the search saw."""
    result = monai_bundle_run(["inference"], image=phi_scan, ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path,
                              detection_min_score=1e9, detection_min_round_score=1e9)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (scan,) = json.loads((tmp_path / "report.json").read_text())["scans"]
    assert scan["nodules"] == [] and scan["detection"]["candidates"] == 0 and "warning" not in scan["detection"]
    assert PLAUSIBLE_LUNG_ML[0] < scan["detection"]["lung_volume_ml"] < PLAUSIBLE_LUNG_ML[1]
    assert (tmp_path / SR_NAME).exists() and not (tmp_path / SEG_NAME).exists()
    sr = hd.sr.srread(tmp_path / SR_NAME)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (count,) = sr.content.get_image_measurement_groups()
    assert [m.value for m in count.get_measurements()] == [0]
    assert sr.StudyInstanceUID == pydicom.dcmread(next(phi_scan.iterdir())).StudyInstanceUID
    assert not dciodvfy_errors(tmp_path / SR_NAME)


def test_patient_identity_stays_out_unless_asked(report_dirs):
    for name in ("nifti", "dicom"):
        for path in report_dirs[name].iterdir():
            text = path.read_bytes()
            if path.name in (SEG_NAME, SR_NAME):  # filed in the PACS beside the patient's images: they carry who it is
                assert all(v.encode() in text for v in PHI.values()), f"{name}/{path.name} lacks the patient's identity"
            else:
                assert not any(v.encode() in text for v in PHI.values()), f"{name}/{path.name} carries PHI"
    (scan,) = json.loads((report_dirs["dicom_phi"] / "report.json").read_text())["scans"]
    assert scan["patient"]["patient_id"] == "MRN-0042" and scan["patient"]["birth_date"] == "19500101"
    assert "Doe" in scan["patient"]["patient_name"]


def _chromium() -> str:
    return debian_tool("chromium", "chromium", "chromium-browser")


def test_html_report_renders_offline_in_headless_chromium(report_dirs, tmp_path):
    out = report_dirs["nifti"]
    (scan,) = json.loads((out / "report.json").read_text())["scans"]
    page = (out / "report.html").read_text()
    assert not re.search(r'(?:src|href)="(?!data:|#)', page)  # no external assets
    probe = tmp_path / "report.html"  # the page plus a script that records what the browser decoded
    probe.write_text(page.replace("</body>", """<script>
document.body.setAttribute('data-images-loaded', [...document.images].filter(i => i.complete && i.naturalWidth > 0).length);
document.body.setAttribute('data-rows', document.querySelectorAll('table.nodules tbody tr').length);
</script></body>""").replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';"))  # fmt: skip
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    n = len(scan["nodules"])
    assert re.search(rf'data-images-loaded="{3 * n}"', dom) and re.search(rf'data-rows="{n}"', dom)
    for nodule in scan["nodules"]:
        assert f'id="row-{nodule["nodule_id"]}"' in dom and f'alt="nodule {nodule["nodule_id"]} axial"' in dom


def test_batch_report_records_failures_and_resumes(trained, phantom_dir, tmp_path, capsys):
    from nodule_bundle.apps.cli import main

    uids = sorted(p.name[: -len(".nii.gz")] for p in (phantom_dir / "images").glob("*.nii.gz"))[:2]
    scans = tmp_path / "scans"
    scans.mkdir()
    for uid in uids:
        shutil.copy(phantom_dir / "images" / f"{uid}.nii.gz", scans / f"{uid}.nii.gz")
    (scans / "broken.nii.gz").write_bytes((phantom_dir / "images" / f"{uids[0]}.nii.gz").read_bytes()[:5000])  # truncated
    nodules = tmp_path / "nodules.csv"  # the phantom's list, and a row for the broken scan
    nodules.write_text((phantom_dir / "annotations.csv").read_text().rstrip("\n") + "\nbroken,0,0,0,5,0,solid,b-00,smooth,0\n")
    out, model = tmp_path / "out", trained / "models" / "model.pt"
    args = ["report", "--images", str(scans), "--out", str(out), "--nodules", str(nodules), "--model", str(model)]
    assert main(args) == 1  # a scan failed; the others were reported
    summary = {r["scan"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert summary["broken"]["status"] == "failed" and "broken.nii.gz" in summary["broken"]["error"]
    for uid in uids:
        assert summary[uid]["status"] == "done" and int(summary[uid]["nodules"]) > 0
        assert (out / uid / "report.html").is_file() and (out / uid / "nodule_labels.nii.gz").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([*uids, "summary.csv"])  # no partial folder of the failed scan
    finished = {uid: (out / uid / "report.json").stat().st_mtime_ns for uid in uids}
    listing = tmp_path / "scans.txt"
    listing.write_text("# the same scans, as a list\n" + "".join(f"scans/{uid}.nii.gz\n" for uid in uids))
    assert main([*args[:2], str(listing), *args[3:]]) == 0
    again = {r["scan"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert {again[uid]["status"] for uid in uids} == {"done earlier"}
    assert {uid: (out / uid / "report.json").stat().st_mtime_ns for uid in uids} == finished  # not redone
    captured = capsys.readouterr()
    assert "2 reported (2 by an earlier run), 0 failed" in captured.out
    assert "reports:" not in captured.err and "scan/s" not in captured.err  # no progress bar when not on a terminal


def test_patient_identity_needs_a_real_yes(tmp_path):
    """MONAI's command line reads ``--include_phi false`` as the text "false", which Python counts as
    true: the report writer refuses any text instead of putting the patient's identity in."""
    for text in ("false", "true"):
        with pytest.raises(ValueError, match=f"include_phi must be True or False, got '{text}'"):
            NoduleReportWriter(tmp_path, include_phi=text)
    assert NoduleReportWriter(tmp_path, include_phi=True).include_phi is True
