"""Write a CT volume (int16 HU, indexed [x, y, z], LPS affine) as NIfTI, MHD/raw, NRRD or a DICOM series.

NIfTI through nibabel (RAS affine), MHD and NRRD through ITK (LPS), DICOM through pydicom with the headers a
scanner writes (CT Image Storage, ImagePositionPatient per slice, unsigned pixels with
RescaleIntercept -1024, 12 bits stored like most CT). Works with pydicom 2.4 and 3.x. Each file is written atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from nodule_bundle.core.geometry import LPS_TO_RAS
from nodule_bundle.core.io_utils import atomic_path, save_nifti_atomic

_PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3


def write_nifti(path: str | Path, volume_hu: np.ndarray, affine_lps: np.ndarray) -> None:
    image = nib.Nifti1Image(volume_hu, LPS_TO_RAS @ affine_lps)
    image.header.set_xyzt_units("mm")
    save_nifti_atomic(image, path)


def write_itk_image(path: str | Path, volume_hu: np.ndarray, affine_lps: np.ndarray) -> None:
    """MHD header + raw data (LUNA16's format) or NRRD, by the suffix of ``path``, through ITK."""
    image = itk.image_from_array(np.ascontiguousarray(volume_hu.transpose(2, 1, 0)))  # ITK arrays are [z, y, x]
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine_lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(affine_lps[:3, :3] / spacing)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name  # same name, so an MHD header's ElementDataFile is already right
        itk.imwrite(image, str(tmp))
        if tmp.with_suffix(".raw").exists():
            tmp.with_suffix(".raw").replace(path.with_suffix(".raw"))
        tmp.replace(path)  # header last: a reader never sees a header without its data


def write_dicom_series(
    directory: str | Path,
    volume_hu: np.ndarray,
    affine_lps: np.ndarray,
    series_uid: str,
    patient_id: str = "PHANTOM",
    study_date: str = "20260101",
) -> None:
    """One file per slice along the affine's third axis, ``directory/IM00001.dcm`` ..., of
    ``patient_id``'s study on ``study_date`` (YYYYMMDD).

    Any direction cosines work (oblique, flipped); the third axis must be the slice normal up to sign.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing
    study_uid = generate_uid(entropy_srcs=[series_uid, "study"])
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame"])
    stored = np.clip(volume_hu.astype(np.int32) + 1024, 0, 4095).astype(np.uint16)  # 12-bit, HU -1024..3071
    for k in range(volume_hu.shape[2]):
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient_id, patient_id
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName, ds.AccessionNumber = "", "O", "", ""
        ds.StudyDate = ds.SeriesDate = study_date  # the CT image IOD's type 2 attributes, as a scanner writes them
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.AcquisitionNumber, ds.PatientPosition, ds.BodyPartExamined = "1", 1, "HFS", "CHEST"
        ds.PositionReferenceIndicator, ds.Manufacturer, ds.KVP = "", "nodule_bundle phantom", "120"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in affine_lps[:3, 3] + affine_lps[:3, 2] * k]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.SliceLocation = f"{affine_lps[2, 3] + affine_lps[2, 2] * k:.4f}"
        ds.Rows, ds.Columns = volume_hu.shape[1], volume_hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        with atomic_path(directory / f"IM{k + 1:05d}.dcm") as tmp:
            if _PYDICOM_3:
                ds.save_as(tmp, enforce_file_format=True)
            else:
                ds.is_little_endian, ds.is_implicit_VR = True, False
                ds.save_as(tmp, write_like_original=False)
