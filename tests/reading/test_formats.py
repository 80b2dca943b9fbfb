"""The same phantom written as NIfTI, MHD and DICOM reads back identically through MONAI's readers."""

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from nodule_bundle.core.geometry import world_to_voxel

FORMATS = {"nifti": "images/{}.nii.gz", "mhd": "mhd/{}.mhd", "dicom": "dicom/{}"}


@pytest.fixture(scope="module")
def loaded(phantom_dir, datalist):
    uid = datalist["training"][0]["seriesuid"]
    load = LoadImage(image_only=True, ensure_channel_first=True)
    return uid, {fmt: load(str(phantom_dir / pattern.format(uid))) for fmt, pattern in FORMATS.items()}


def test_voxels_and_affines_agree_across_formats(loaded):
    _, images = loaded
    ref = images["nifti"]
    for fmt in ("mhd", "dicom"):
        assert images[fmt].shape == ref.shape
        np.testing.assert_array_equal(images[fmt].numpy(), ref.numpy())
        np.testing.assert_allclose(images[fmt].affine.numpy(), ref.affine.numpy(), atol=1e-3)


def test_a_nodule_lands_in_the_same_voxel_in_every_format(loaded, datalist):
    uid, images = loaded
    nodule = next(i for i in datalist["training"] if i["seriesuid"] == uid)
    voxels = {fmt: np.round(world_to_voxel(nodule["center_world_mm"], im.affine, im.meta["space"])) for fmt, im in images.items()}
    assert voxels["nifti"].tolist() == voxels["mhd"].tolist() == voxels["dicom"].tolist()
    i, j, k = voxels["nifti"].astype(int)
    assert images["nifti"][0, i, j, k] > -700  # the nodule is there, not lung


def test_dicom_headers_are_those_of_a_ct_series(phantom_dir, loaded):
    uid, images = loaded
    files = sorted((phantom_dir / "dicom" / uid).glob("*.dcm"))
    assert len(files) == images["dicom"].shape[-1]
    first, second = (pydicom.dcmread(f) for f in files[:2])
    assert first.Modality == "CT" and first.SeriesInstanceUID == uid
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert float(first.RescaleIntercept) == -1024 and float(first.RescaleSlope) == 1
    dz = float(second.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    assert dz == pytest.approx(float(first.SliceThickness), abs=1e-3)
    assert len(first.PixelSpacing) == 2 and first.Rows == images["dicom"].shape[2]
    hu = first.pixel_array.astype(float) * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(hu.T, images["dicom"][0, :, :, 0].numpy())


def test_annotations_csv_has_luna16_columns_first(phantom_dir, datalist):
    header = (phantom_dir / "annotations.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert {"malignancy", "texture"} <= set(header)
    n_items = sum(1 for s in ("training", "validation", "test") for i in datalist[s] if i.get("is_nodule", 1))
    assert len((phantom_dir / "annotations.csv").read_text().splitlines()) == n_items + 1
    scans = {s: {i["seriesuid"] for i in datalist[s]} for s in ("training", "validation", "test")}
    assert not (scans["training"] & scans["validation"]) and not (scans["training"] & scans["test"])


@pytest.mark.parametrize(
    "values, message",
    [
        (np.random.default_rng(0).uniform(0, 900, (24, 24, 12)), "not a CT in Hounsfield units: darkest voxel"),  # an MR
        (np.where(np.arange(24 * 24 * 12).reshape(24, 24, 12) == 7, np.nan, -1000.0), "NaN or infinite voxel values"),
    ],
)
def test_images_that_are_not_ct_in_hounsfield_units_are_refused(tmp_path, values, message):
    import nibabel as nib

    from nodule_bundle.reading.load import LoadCTImaged, UnreadableImageError

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), path)
    with pytest.raises(UnreadableImageError, match=message) as err:
        LoadCTImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)})
    assert str(path) in str(err.value)


@pytest.mark.parametrize("dtype", [None, np.float32])
@pytest.mark.parametrize(
    "scaled, canonical, stored_dtype, suffix",
    [(False, False, "<i2", ".nii.gz"), (True, False, "<i2", ".nii.gz"), (False, True, "<i2", ".nii.gz"), (False, False, ">i2", ".nii.gz"),
     (False, False, "<f4", ".nii")],
)  # fmt: skip
def test_the_nifti_reader_gives_what_monais_nibabel_reader_gives(tmp_path, monkeypatch, dtype, scaled, canonical, stored_dtype, suffix):
    """Voxels (rescaled by scl_slope/inter), dtype, C order and affine as MONAI's ``NibabelReader``, on
    a non-RAS file, with and without ``as_closest_canonical`` (which hands over a non-Fortran view),
    big-endian and uncompressed; read in slabs of 4 slices, the last one partial."""
    import nibabel as nib
    from monai.data import NibabelReader

    from nodule_bundle.reading.load import LoadCTImaged
    from nodule_bundle.reading.readers import NiftiReader

    monkeypatch.setattr(NiftiReader, "SLAB_SLICES", 4)
    stored = np.random.default_rng(1).integers(-1024, 2000, size=(23, 17, 11)).astype(stored_dtype)
    affine = np.array([[-0.7, 0, 0, 90], [0, 0, 1.5, -40], [0, 0.7, 0, -20], [0, 0, 0, 1.0]])  # LIA-like
    image = nib.Nifti1Image(stored, affine)
    if scaled:
        image.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / f"scan{suffix}"
    nib.save(image, path)
    ours = LoadCTImaged("image", ensure_channel_first=True, image_only=True, dtype=dtype, as_closest_canonical=canonical)({"image": str(path)})["image"]
    stock = LoadImage(reader=NibabelReader(as_closest_canonical=canonical), ensure_channel_first=True, image_only=True, dtype=dtype)(str(path))
    assert ours.dtype == stock.dtype and ours.is_contiguous()
    np.testing.assert_array_equal(ours.numpy(), stock.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), stock.affine.numpy())


@pytest.mark.parametrize(
    ("suffix", "reason"), [(".nii", "ends inside slice 35 of 40"), (".nii.gz", r"the compressed data ends inside slices 3\d-3\d of 40")]
)
def test_a_nifti_file_cut_short_is_refused_naming_the_file(tmp_path, suffix, reason):
    """A NIfTI file whose voxels stop part-way (a copy interrupted; for ``.nii.gz`` the gzip stream cut
    short) is an error naming the file and where it ends, not zeros."""
    import nibabel as nib

    from nodule_bundle.reading.load import LoadCTImaged, UnreadableImageError

    path = tmp_path / f"scan{suffix}"
    voxels = np.random.default_rng(0).integers(-1000, 400, (16, 16, 40), dtype=np.int16)  # noise: compressed evenly
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 16 * 16 * 2 * 5 if suffix == ".nii" else size * 9 // 10])  # the last slices missing
    with pytest.raises(UnreadableImageError, match=reason) as err:
        LoadCTImaged("image", ensure_channel_first=True, image_only=True)({"image": str(path)})
    assert str(path) in str(err.value)


def test_recent_scans_are_read_once_and_each_item_gets_its_own_copy(tmp_path, monkeypatch):
    """One item a nodule: a scan's items share one read; a changed file is read again."""
    import os

    import torch

    from nodule_bundle.data.writers import write_nifti
    from nodule_bundle.reading.load import LoadCTImaged, UnreadableImageError

    path = tmp_path / "scan.nii.gz"
    write_nifti(path, np.full((20, 20, 10), -1000, np.int16), np.eye(4))
    load = LoadCTImaged("image", ensure_channel_first=True, image_only=True, dtype=None, recent_scans=2)
    reads = []
    read = load._read
    monkeypatch.setattr(load, "_read", lambda data, reader=None: reads.append(data["image"]) or read(data, reader))
    first, second = (load({"image": str(path), "nodule_id": n}) for n in ("n1", "n2"))
    assert len(reads) == 1 and second["nodule_id"] == "n2"
    assert torch.equal(first["image"], second["image"]) and first["image"].meta["filename_or_obj"] == str(path)
    first["image"][0, 0, 0, 0] = 500  # one item's change reaches neither the other item nor the kept scan
    first["image"].meta["changed"] = True
    third = load({"image": str(path)})
    assert int(second["image"][0, 0, 0, 0]) == int(third["image"][0, 0, 0, 0]) == -1000 and "changed" not in third["image"].meta
    write_nifti(path, np.full((20, 20, 10), -900, np.int16), np.eye(4))
    os.utime(path, ns=(1, 1))  # a new file with the old size: its modification time tells it apart
    assert int(load({"image": str(path)})["image"][0, 0, 0, 0]) == -900 and len(reads) == 2
    with pytest.raises(UnreadableImageError, match="gone.nii.gz: cannot read image"):  # a missing file: the clear error, not a stat traceback
        load({"image": str(tmp_path / "gone.nii.gz")})
