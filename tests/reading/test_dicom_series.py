"""DICOM series as they come off the scanner: choice, order, HU, and every malformed case named in
:mod:`nodule_bundle.reading.dicom_series` (errors name the directory or file and the problem)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_helpers import SPACING, block, edit, new_instance, shift_position, write_series
from nodule_bundle.reading.dicom_series import DicomSeriesError, DicomSeriesWarning
from nodule_bundle.reading.load import LoadCTImaged


def load(directory: Path, **kwargs):
    return LoadCTImaged("image", ensure_channel_first=True, image_only=True, **kwargs)({"image": str(directory)})["image"]


def _untouched(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())}


def test_slices_are_ordered_by_position_not_by_name_or_instance_number(tmp_path):
    volume = block()
    files = write_series(tmp_path, volume)
    order = list(range(len(files)))
    random.Random(3).shuffle(order)
    for f, k in zip(files, order):  # scramble file names and InstanceNumbers together
        edit(f, lambda ds, k=k: setattr(ds, "InstanceNumber", 100 - k), tmp_path / f"x{k:03d}.tmp")
        f.unlink()
    for f in tmp_path.glob("x*.tmp"):
        f.rename(f.with_suffix(""))
    before = _untouched(tmp_path)
    image = load(tmp_path)
    np.testing.assert_array_equal(image[0].numpy(), volume)
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0), SPACING, atol=1e-4)
    assert _untouched(tmp_path) == before  # inputs are read, never written


def test_the_ct_series_with_most_slices_is_chosen_and_others_named(tmp_path):
    main_uid, small_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "a", uid=main_uid)
    small = block(1)[:, :, :4]
    write_series(tmp_path / "b", small, uid=small_uid)
    mr = Path(get_testdata_file("MR_small.dcm"))
    shutil.copy(mr, tmp_path / "mr.dcm")
    with pytest.warns(DicomSeriesWarning, match=small_uid):
        image = load(tmp_path)
    assert image.meta["series_uid"] == main_uid and image.shape[-1] == 10
    np.testing.assert_array_equal(load(tmp_path, series_uid=small_uid)[0].numpy(), small)
    with pytest.raises(DicomSeriesError, match=r"no series 1\.2\.3.*MR"):
        load(tmp_path, series_uid="1.2.3")
    mr_uid = pydicom.dcmread(mr).SeriesInstanceUID
    with pytest.raises(DicomSeriesError, match="is MR, not CT"):
        load(tmp_path, series_uid=mr_uid)


def test_real_mr_images_are_not_read_as_ct(tmp_path):
    for k, name in enumerate(["MR_small.dcm", "MR2_UNCR.dcm"]):
        path = get_testdata_file(name, download=False) or pytest.skip(f"{name} not installed")
        shutil.copy(path, tmp_path / f"{k}.dcm")
    with pytest.raises(DicomSeriesError, match=r"no CT series \(found .*MR"):
        load(tmp_path)


def test_localiser_images_are_dropped_with_a_warning(tmp_path):
    volume = block()
    files = write_series(tmp_path, volume)

    def scout(ds):
        new_instance(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]  # coronal

    edit(files[0], scout, tmp_path / "scout.dcm")
    with pytest.warns(DicomSeriesWarning, match="dropped 1 localiser"):
        np.testing.assert_array_equal(load(tmp_path)[0].numpy(), volume)


def test_non_dicom_files_beside_a_series_are_ignored_with_a_warning(tmp_path):
    write_series(tmp_path)
    (tmp_path / "README.txt").write_text("exported by PACS\n")
    with pytest.warns(DicomSeriesWarning, match="ignored 1 file"):
        assert load(tmp_path).shape[-1] == 10


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda files, d: files[4].unlink(), r"missing slice\(s\): a gap of 4\.00 mm between IM00004\.dcm and IM00006\.dcm"),
        (lambda files, d: edit(files[3], new_instance, d / "copy.dcm"), "duplicated slice position"),
        (lambda files, d: [edit(f, shift_position((0, 0, 0.6 * (k >= 5)))) for k, f in enumerate(files)], "uneven slice spacing"),
        (lambda files, d: [edit(f, shift_position((0, 2.0 * k * np.tan(np.radians(15)), 0))) for k, f in enumerate(files)], "gantry tilt of 15.0 degrees"),
        (lambda files, d: edit(files[2], lambda ds: setattr(ds, "ImageOrientationPatient", ["0.996195", "0.087156", "0", "-0.087156", "0.996195", "0"])), "mixed orientations"),
        (lambda files, d: edit(files[2], lambda ds: setattr(ds, "PixelSpacing", ["0.7", "0.7"])), "mixed pixel spacings"),
        (lambda files, d: [f.unlink() for f in files[1:]], "single slice"),
        (lambda files, d: files[2].write_bytes(b""), r"IM00003\.dcm: empty file"),
        (lambda files, d: files[2].write_bytes(files[2].read_bytes()[:400]), r"IM00003\.dcm: incomplete DICOM image header \(truncated file\?\)"),
        (lambda files, d: [f.unlink() for f in files] and (d / "notes.txt").write_text("x"), "no DICOM image files"),
    ],
    ids=["missing-slice", "duplicate-position", "uneven-spacing", "gantry-tilt", "mixed-orientation", "mixed-spacing",
         "single-slice", "empty-file", "truncated-header", "no-dicom"],
)  # fmt: skip
def test_malformed_series_fail_with_a_message_naming_the_problem(tmp_path, damage, message):
    files = write_series(tmp_path)
    damage(files, tmp_path)
    before = _untouched(tmp_path)
    with pytest.raises(DicomSeriesError, match=message) as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert _untouched(tmp_path) == before


def test_slight_spacing_jitter_is_accepted_with_a_warning(tmp_path):
    files = write_series(tmp_path)
    for k, f in enumerate(files):
        edit(f, shift_position((0, 0, 0.05 * (k % 2))))  # gaps alternate 2.05 / 1.95 mm
    with pytest.warns(DicomSeriesWarning, match="uneven slice spacing"):
        image = load(tmp_path)
    assert image.affine[2, 2] == pytest.approx(2.0, abs=0.06)


def test_a_truncated_pixel_data_element_is_reported(tmp_path):
    files = write_series(tmp_path)
    files[5].write_bytes(files[5].read_bytes()[:-300])
    with pytest.raises(DicomSeriesError, match=r"IM00006\.dcm: pixel data truncated \(\d+ of 960 bytes\)"):
        load(tmp_path)


def _series_from_real_slice(directory: Path, name: str, n: int = 3, **attributes) -> Path:
    """``n`` copies of a real CT slice (pixel data untouched) stacked 5 mm apart as one series."""
    path = get_testdata_file(name, download=False) or pytest.skip(f"{name} not installed (pip install pydicom-data)")
    directory.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()

    def restack(ds, k):
        new_instance(ds)
        ds.SeriesInstanceUID = uid
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5.0 * k]
        for key, value in attributes.items():
            setattr(ds, key, value)

    for k in range(n):
        edit(Path(path), lambda ds, k=k: restack(ds, k), directory / f"{k}.dcm")
    return Path(path)


def test_real_ct_slices_are_rescaled_to_hounsfield_units(tmp_path):
    source = _series_from_real_slice(tmp_path / "ct", "CT_small.dcm", RescaleSlope="2", RescaleIntercept="-1000")
    stored = pydicom.dcmread(source).pixel_array.astype(np.float64)
    image = load(tmp_path / "ct")
    assert image.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(image[0, :, :, 1].numpy(), (stored * 2 - 1000).T)


def test_real_jpeg2000_series_decodes_to_the_uncompressed_values(tmp_path):
    _series_from_real_slice(tmp_path / "j2k", "693_J2KR.dcm")
    raw = _series_from_real_slice(tmp_path / "raw", "693_UNCR.dcm")
    ds = pydicom.dcmread(raw)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    j2k, uncompressed = load(tmp_path / "j2k"), load(tmp_path / "raw")
    np.testing.assert_array_equal(j2k.numpy(), uncompressed.numpy())
    np.testing.assert_array_equal(uncompressed[0, :, :, 0].numpy(), hu.T)
    assert uncompressed.min() < -900  # air in HU, not the stored values


def test_a_real_multi_frame_ct_is_refused_by_name(tmp_path):
    path = get_testdata_file("eCT_Supplemental.dcm", download=False) or pytest.skip("pydicom-data not installed")
    shutil.copy(path, tmp_path / "enhanced.dcm")
    with pytest.raises(DicomSeriesError, match=r"enhanced\.dcm: a multi-frame \(2 frames\) image"):
        load(tmp_path)


def test_a_transfer_syntax_that_cannot_be_decoded_is_named(tmp_path):
    _series_from_real_slice(tmp_path, "693_J2KR.dcm")
    for f in tmp_path.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
        ds.save_as(f)
    with pytest.raises(DicomSeriesError, match=r"MPEG-4 .*1\.2\.840\.10008\.1\.2\.4\.102.*cannot be decoded"):
        load(tmp_path)
