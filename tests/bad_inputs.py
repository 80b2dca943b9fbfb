"""The bad-input corpus: inputs as they go wrong in hospitals, made fresh by the tests (no committed
binaries). Each case builds its files from a good phantom scan, a good nodule list and a good model,
breaks one thing, and names the file the error must name and a pattern the error must match."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from dicom_helpers import edit, new_instance


@dataclass(frozen=True)
class Good:
    """The good inputs a case starts from."""

    nifti: Path
    mhd: Path
    dicom: Path
    nodules: Path
    model: Path
    datalist: Path
    dataset_dir: Path


@dataclass
class Case:
    """One bad input: a scan to classify (``workflow = "inference"``) or a datalist to train on."""

    name: str
    expect: str  # regular expression the error line must match (after the file name)
    workflow: str = "inference"
    image: Path | None = None
    nodules: Path | None = None
    model: Path | None = None
    datalist: Path | None = None
    dataset_dir: Path | None = None
    names: Path | None = None  # the file the error must name (default: the image)

    @property
    def named(self) -> Path:
        return self.names or self.image or self.datalist  # type: ignore[return-value]


Builder = Callable[[Path, Good], Case]
CASES: dict[str, Builder] = {}


def case(builder: Builder) -> Builder:
    CASES[builder.__name__] = builder
    return builder


def _series(tmp: Path, good: Good) -> list[Path]:
    shutil.copytree(good.dicom, tmp / "series")
    return sorted((tmp / "series").glob("*.dcm"))


def _inference(name: str, expect: str, good: Good, **kwargs) -> Case:
    return Case(name, expect, **{"image": good.nifti, "nodules": good.nodules, "model": good.model, **kwargs})


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.0, 1.0]) if affine is None else affine), path)
    return path


def _good_volume(good: Good) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(good.nifti)
    return np.asarray(img.dataobj), img.affine


# --- DICOM series -----------------------------------------------------------------------------------


@case
def dicom_empty_file(tmp, good):
    files = _series(tmp, good)
    files[3].write_bytes(b"")
    return _inference("dicom_empty_file", r"empty|not a readable DICOM|no DICOM", good, image=tmp / "series", names=files[3])


@case
def dicom_truncated_file(tmp, good):
    files = _series(tmp, good)
    files[3].write_bytes(files[3].read_bytes()[:2000])
    return _inference("dicom_truncated_file", r"truncated|incomplete|damaged|cannot decode|could not decode", good, image=tmp / "series")


@case
def dicom_folder_without_dicom(tmp, good):
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("no images here\n")
    return _inference("dicom_folder_without_dicom", r"no DICOM", good, image=tmp / "notes")


@case
def dicom_empty_folder(tmp, good):
    (tmp / "empty").mkdir()
    return _inference("dicom_empty_folder", r"no DICOM", good, image=tmp / "empty")


@case
def dicom_two_series_mixed(tmp, good):
    files = _series(tmp, good)
    edit(files[2], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]))  # another series' slice, same UID
    return _inference("dicom_two_series_mixed", r"orientation", good, image=tmp / "series")


@case
def dicom_missing_slices(tmp, good):
    files = _series(tmp, good)
    files[len(files) // 2].unlink()
    files[len(files) // 2 + 1].unlink()
    return _inference("dicom_missing_slices", r"missing|gap", good, image=tmp / "series")


@case
def dicom_duplicate_positions(tmp, good):
    files = _series(tmp, good)
    edit(files[4], new_instance, tmp / "series" / "copy.dcm")
    return _inference("dicom_duplicate_positions", r"same position|duplicate", good, image=tmp / "series")


@case
def dicom_localizers_only(tmp, good):
    for path in _series(tmp, good):
        edit(path, lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    return _inference("dicom_localizers_only", r"locali[sz]er|no CT", good, image=tmp / "series")


@case
def dicom_mr_not_ct(tmp, good):
    for path in _series(tmp, good):
        edit(path, lambda ds: setattr(ds, "Modality", "MR"))
    return _inference("dicom_mr_not_ct", r"MR|no CT", good, image=tmp / "series")


@case
def dicom_wrong_rescale_intercept(tmp, good):
    for path in _series(tmp, good):
        edit(path, lambda ds: setattr(ds, "RescaleIntercept", "0"))  # stored 0..4095 read as HU: no air
    return _inference("dicom_wrong_rescale_intercept", r"not a CT in Hounsfield units", good, image=tmp / "series")


@case
def dicom_enormous_header(tmp, good):
    files = _series(tmp, good)
    for path in files:
        edit(path, lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)))
    return _inference("dicom_enormous_header", r"GB|too large|truncated|damaged|could not decode|size", good, image=tmp / "series")


# --- image files ------------------------------------------------------------------------------------


def _non_finite(name: str, value: float) -> Builder:
    def build(tmp: Path, good: Good) -> Case:
        data, affine = _good_volume(good)
        data = data.astype(np.float32)
        data[5, 5, 5] = value
        return _inference(name, r"NaN or infinite", good, image=_nifti(tmp / f"{name}.nii.gz", data, affine))

    return build


CASES["nifti_nan_voxels"], CASES["nifti_inf_voxels"] = _non_finite("nifti_nan_voxels", np.nan), _non_finite("nifti_inf_voxels", np.inf)


@case
def nifti_zero_spacing(tmp, good):
    data, affine = _good_volume(good)
    header = nib.Nifti1Image(data, affine).header
    header.set_sform(None, code=0)  # the geometry comes from the qform: pixdim says 0 mm between slices
    header["pixdim"][3] = 0.0
    nib.save(nib.Nifti1Image(data, None, header=header), tmp / "flat.nii.gz")
    return _inference("nifti_zero_spacing", r"spacing", good, image=tmp / "flat.nii.gz")


@case
def mhd_negative_spacing(tmp, good):
    shutil.copy(good.mhd, tmp / "scan.mhd")
    shutil.copy(good.mhd.with_suffix(".raw"), tmp / "scan.raw")
    header = (tmp / "scan.mhd").read_text().splitlines()
    header = ["ElementSpacing = 0.7 -0.7 2" if line.startswith("ElementSpacing") else line for line in header]
    (tmp / "scan.mhd").write_text("\n".join(header) + "\n")
    return _inference("mhd_negative_spacing", r"spacing", good, image=tmp / "scan.mhd")


@case
def nifti_2d_image(tmp, good):
    data, _ = _good_volume(good)
    return _inference("nifti_2d_image", r"3D volume", good, image=_nifti(tmp / "slice.nii.gz", data[:, :, 0], np.eye(4)))


@case
def nifti_4d_image(tmp, good):
    data, affine = _good_volume(good)
    return _inference("nifti_4d_image", r"3D volume", good, image=_nifti(tmp / "series4d.nii.gz", np.stack([data, data], -1), affine))


@case
def nifti_enormous_header(tmp, good):
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    path = tmp / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)  # 54 TB claimed, 1 kB present
    return _inference("nifti_enormous_header", r"GB", good, image=path)


@case
def mhd_enormous_header(tmp, good):
    (tmp / "huge.raw").write_bytes(b"\0" * 1024)
    (tmp / "huge.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 1000\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"
        "ElementDataFile = huge.raw\n"
    )  # fmt: skip
    return _inference("mhd_enormous_header", r"GB", good, image=tmp / "huge.mhd")


@case
def nifti_truncated_gz(tmp, good):
    raw = good.nifti.read_bytes()
    (tmp / "cut.nii.gz").write_bytes(raw[: len(raw) // 3])
    return _inference("nifti_truncated_gz", r"cannot read image|truncated|ended|EOF|compressed", good, image=tmp / "cut.nii.gz")


@case
def nifti_truncated_data(tmp, good):
    raw = gzip.decompress(good.nifti.read_bytes())
    (tmp / "cut.nii").write_bytes(raw[: len(raw) // 2])
    return _inference("nifti_truncated_data", r"truncated|cannot read image|bytes", good, image=tmp / "cut.nii")


@case
def mhd_missing_raw(tmp, good):
    shutil.copy(good.mhd, tmp / "scan.mhd")
    return _inference("mhd_missing_raw", r"cannot read image|not found|missing|no such", good, image=tmp / "scan.mhd")


@case
def image_missing(tmp, good):
    return _inference("image_missing", r"not found|no such|does not exist", good, image=tmp / "absent.nii.gz")


@case
def image_not_an_image(tmp, good):
    (tmp / "text.nii.gz").write_text("this is a text file, not a NIfTI image\n")
    return _inference("image_not_an_image", r"cannot read image", good, image=tmp / "text.nii.gz")


# --- nodule lists -----------------------------------------------------------------------------------


def _csv(tmp: Path, text: str) -> Path:
    (tmp / "nodules.csv").write_text(text)
    return tmp / "nodules.csv"


@case
def nodules_outside_volume(tmp, good):
    path = _csv(tmp, "coordX,coordY,coordZ\n900.0,900.0,900.0\n")
    return _inference("nodules_outside_volume", r"outside the image", good, nodules=path, names=good.nifti)


#: Nodule lists that are wrong in their text: name -> (CSV text, what the error must say).
BAD_NODULE_LISTS = {
    "nodules_missing_columns": ("x,y,z\n1,2,3\n", r"missing column"),
    "nodules_not_numbers": ("coordX,coordY,coordZ\n1.0,left upper lobe,3.0\n", r"row 2.*coordY"),
    "nodules_not_finite": ("coordX,coordY,coordZ\n1.0,nan,3.0\n", r"row 2.*coordY"),
    "nodules_empty_list": ("coordX,coordY,coordZ\n", r"no nodules"),
}


def _bad_nodule_list(name: str, text: str, expect: str) -> Builder:
    def build(tmp: Path, good: Good) -> Case:
        path = _csv(tmp, text)
        return _inference(name, expect, good, nodules=path, names=path)

    return build


for _name, (_text, _expect) in BAD_NODULE_LISTS.items():
    CASES[_name] = _bad_nodule_list(_name, _text, _expect)


@case
def nodules_list_missing(tmp, good):
    return _inference("nodules_list_missing", r"not found", good, nodules=tmp / "absent.csv", names=tmp / "absent.csv")


@case
def nodules_binary_junk(tmp, good):
    (tmp / "junk.csv").write_bytes(bytes(range(256)) * 4)
    return _inference("nodules_binary_junk", r"not a text|UTF-8|missing column", good, nodules=tmp / "junk.csv", names=tmp / "junk.csv")


# --- model weights ----------------------------------------------------------------------------------


@case
def checkpoint_of_another_network(tmp, good):
    from monai.networks.nets import resnet10

    torch.save(resnet10(spatial_dims=3, n_input_channels=1, num_classes=2).state_dict(), tmp / "other.pt")
    return _inference("checkpoint_of_another_network", r"another network|does not fit", good, model=tmp / "other.pt", names=tmp / "other.pt")


@case
def checkpoint_corrupt(tmp, good):
    (tmp / "corrupt.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return _inference("checkpoint_corrupt", r"not a readable PyTorch checkpoint", good, model=tmp / "corrupt.pt", names=tmp / "corrupt.pt")


@case
def checkpoint_truncated(tmp, good):
    raw = good.model.read_bytes()
    (tmp / "cut.pt").write_bytes(raw[: len(raw) // 2])
    return _inference("checkpoint_truncated", r"not a readable PyTorch checkpoint", good, model=tmp / "cut.pt", names=tmp / "cut.pt")


@case
def checkpoint_with_code(tmp, good):
    torch.save({"model": torch.load(good.model, weights_only=True), "hook": shutil.rmtree}, tmp / "code.pt")  # unpickling would import code
    return _inference("checkpoint_with_code", r"not a readable PyTorch checkpoint|weights only", good, model=tmp / "code.pt", names=tmp / "code.pt")


@case
def checkpoint_missing(tmp, good):
    return _inference("checkpoint_missing", r"not found", good, model=tmp / "absent.pt", names=tmp / "absent.pt")


@case
def calibration_broken(tmp, good):
    shutil.copy(good.model, tmp / "model.pt")
    (tmp / "calibration.json").write_text('{"malignancy_temperature": "warm"}')
    return _inference("calibration_broken", r"malignancy_temperature", good, model=tmp / "model.pt", names=tmp / "calibration.json")


# --- datalists (training) ---------------------------------------------------------------------------


@case
def datalist_missing_files(tmp, good):
    datalist = json.loads(good.datalist.read_text())
    datalist["training"][0] = {**datalist["training"][0], "image": "images/absent.nii.gz"}
    (tmp / "datalist.json").write_text(json.dumps(datalist))
    return Case("datalist_missing_files", r"absent\.nii\.gz.*not found|not found.*absent", workflow="train", datalist=tmp / "datalist.json",
                dataset_dir=good.dataset_dir)  # fmt: skip


@case
def datalist_not_json(tmp, good):
    (tmp / "datalist.json").write_text('{"training": [')
    return Case("datalist_not_json", r"JSON", workflow="train", datalist=tmp / "datalist.json", dataset_dir=good.dataset_dir)


@case
def datalist_without_training(tmp, good):
    (tmp / "datalist.json").write_text(json.dumps({"validation": json.loads(good.datalist.read_text())["validation"]}))
    return Case("datalist_without_training", r"training", workflow="train", datalist=tmp / "datalist.json", dataset_dir=good.dataset_dir)


#: What each run of a case came to, for the summary line (tests/conftest.py prints it).
RESULTS: list[dict] = []


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content: inputs must come out of a failed run unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
