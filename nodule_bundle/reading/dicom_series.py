"""DICOM CT series as they come off the scanner: find the slices, choose the series, order and check them.

Only headers are read here (pydicom, no pixel data); the pixels are decoded by ITK/GDCM through
MONAI's ``ITKReader`` (:class:`nodule_bundle.reading.readers.DicomSeriesReader`). What is checked, and how:

======================================  =========================================================
found in the directory                  outcome
======================================  =========================================================
no DICOM file at all                    error
files that are not DICOM                ignored, with a warning counting them
a DICOM file that cannot be parsed      error naming the file (empty, truncated, corrupt)
several series                          the CT series with the most slices (or ``series_uid``);
                                        a warning names the others
no CT series / a named series not CT    error naming the modalities found
localiser (scout) images                dropped, with a warning (``ImageType`` LOCALIZER)
compressed transfer syntax GDCM lacks   error naming the syntax (HTJ2K, JPEG XL, video, ...)
mixed orientations or image sizes       error
duplicated slice positions              error naming both files
missing slices (a gap >= 1.5 spacings)  error naming the gap
uneven spacing, deviation <= 10 %       warning (ITK uses the mean spacing)
uneven spacing, deviation > 10 %        error
gantry tilt (stack not along normal)    error with the tilt angle
a single slice                          error (a 3D series is needed)
a multi-frame (enhanced) image          error (single-frame series only, for now)
======================================  =========================================================

Slices are sorted by ``ImagePositionPatient`` projected on the slice normal (the cross product of
the ``ImageOrientationPatient`` row and column directions), never by file name or InstanceNumber.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from nodule_bundle.core.errors import NoduleBundleError

# Transfer syntaxes ITK's GDCM decodes (uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000, RLE).
DECODABLE_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE Lossless
    }
)
_HEADER_TAGS = [
    "SeriesInstanceUID", "Modality", "ImageType", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "SeriesDescription", "BitsStored", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
]  # fmt: skip
_UNEVEN_TOLERANCE = 0.01  # relative deviation of a slice gap from the median that is just jitter
_UNEVEN_LIMIT = 0.10  # above this the geometry would be wrong: refuse
_MISSING_GAP = 1.5  # a gap this many times the median spacing means slices are missing
_MAX_TILT_DEG = 0.1


class DicomSeriesError(NoduleBundleError):
    """A DICOM directory that cannot be read as one CT volume; the message names it and the problem."""


class DicomSeriesWarning(UserWarning):
    """Something unusual about a DICOM series that the reader handled (see the module table)."""


@dataclass(frozen=True)
class SliceHeader:
    """What the reader needs from one DICOM file's header (positions in LPS world mm)."""

    path: Path
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    transfer_syntax: str
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing_mm: tuple[float, float] | None
    size: tuple[int, int] | None
    description: str
    hu_range: tuple[float, float] = (-32768.0, 32767.0)  # what the stored bits can hold after rescale
    integer_rescale: bool = True

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type


@dataclass(frozen=True)
class DicomSeries:
    """One CT series in slice order: ``files[k]`` is slice ``k`` along ``normal``."""

    series_uid: str
    files: tuple[Path, ...]
    positions_mm: np.ndarray  # (N, 3) LPS ImagePositionPatient, sorted along the normal
    row_direction: np.ndarray  # direction of increasing column index (DICOM IOP[0:3])
    column_direction: np.ndarray  # direction of increasing row index (DICOM IOP[3:6])
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns), as DICOM orders it
    slice_spacing_mm: float
    transfer_syntax: str
    fits_int16: bool  # every slice's rescaled values are integers within int16: read as int16

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def affine_lps(self) -> np.ndarray:
        """voxel ``[column, row, slice]`` -> LPS world mm, the index order MONAI's ITKReader returns."""
        aff = np.eye(4)
        aff[:3, 0] = self.row_direction * self.pixel_spacing_mm[1]
        aff[:3, 1] = self.column_direction * self.pixel_spacing_mm[0]
        aff[:3, 2] = self.normal * self.slice_spacing_mm
        aff[:3, 3] = self.positions_mm[0]
        return aff


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    """A string-valued element (DS, IS, CS, UI, LO) as its raw text, without pydicom's per-value
    conversion: the header scan of a 300-slice series spends most of its time there otherwise."""
    element = ds.get_item(keyword)
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \0")
    return "\\".join(str(v) for v in value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else str(value)


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in _text(ds, keyword).split("\\"))
    except ValueError:
        return None
    return values if len(values) == n else None


def _rescale(ds: pydicom.Dataset) -> dict:
    """The HU range the stored bits can reach after RescaleSlope/Intercept, and whether it is integral."""
    bits, signed = int(ds.get("BitsStored") or 16), int(ds.get("PixelRepresentation") or 0) == 1
    slope, intercept = float(_text(ds, "RescaleSlope") or 1.0), float(_text(ds, "RescaleIntercept") or 0.0)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return {"hu_range": (ends[0], ends[1]), "integer_rescale": slope.is_integer() and intercept.is_integer()}


def read_slice_header(path: Path) -> SliceHeader:
    """The header of one DICOM file; :class:`InvalidDicomError` for files without the DICOM preamble."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        meta = ds.file_meta
        image_type = tuple(v.strip().upper() for v in _text(ds, "ImageType").split("\\") if v.strip())
        rows, columns = ds.get("Rows"), ds.get("Columns")
        sop_class = pydicom.uid.UID(str(meta.get("MediaStorageSOPClassUID", "")))
        if "Image Storage" in sop_class.name and not (rows and columns):
            raise DicomSeriesError(f"{path}: incomplete DICOM image header (truncated file?): no Rows/Columns")
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise DicomSeriesError(f"{path}: a multi-frame ({ds.NumberOfFrames} frames) image; only single-frame CT series are read")
        return SliceHeader(
            path=path,
            series_uid=_text(ds, "SeriesInstanceUID"),
            modality=_text(ds, "Modality"),
            image_type=image_type,
            transfer_syntax=str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")),
            position_mm=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
            orientation=_floats(ds, "ImageOrientationPatient", 6),
            pixel_spacing_mm=_floats(ds, "PixelSpacing", 2),  # type: ignore[arg-type]
            size=(int(rows), int(columns)) if rows and columns else None,
            description=_text(ds, "SeriesDescription"),
            **_rescale(ds),
        )
    except (InvalidDicomError, DicomSeriesError):
        raise
    except Exception as err:  # pydicom raises many types on damaged files
        raise DicomSeriesError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None


#: The header attributes that identify the patient and the study; read only for the report, which
#: leaves them out unless asked (``include_phi``).
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "AccessionNumber")


def read_identity(path: Path) -> dict[str, str]:
    """The :data:`IDENTITY_KEYWORDS` present in one DICOM file's header, as text."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTITY_KEYWORDS))
    return {k: str(ds.get(k)).strip() for k in IDENTITY_KEYWORDS if ds.get(k) not in (None, "")}


def scan_directory(directory: str | Path) -> list[SliceHeader]:
    """Headers of every DICOM image file under ``directory`` (recursively); non-DICOM files are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DicomSeriesError(f"{directory}: not a directory")
    headers, skipped = [], 0
    for root, _, names in os.walk(directory):
        for name in sorted(names):
            path = Path(root) / name
            if name.upper() == "DICOMDIR":
                continue
            if path.stat().st_size == 0:
                raise DicomSeriesError(f"{path}: empty file in a DICOM directory")
            try:
                header = read_slice_header(path)
            except InvalidDicomError:
                skipped += 1
                continue
            if header.size is not None:  # an image, not a structured report or presentation state
                headers.append(header)
    if skipped:
        warnings.warn(f"{directory}: ignored {skipped} file(s) that are not DICOM", DicomSeriesWarning, stacklevel=2)
    if not headers:
        raise DicomSeriesError(f"{directory}: no DICOM image files found")
    return headers


def _describe(groups: dict[str, list[SliceHeader]]) -> str:
    return "; ".join(f"{uid} ({g[0].modality or '?'}, {len(g)} images)" for uid, g in groups.items())


def choose_series(headers: Sequence[SliceHeader], directory: str | Path, series_uid: str | None = None) -> DicomSeries:
    """The CT series to read: ``series_uid`` if given, else the CT series with the most slices."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_uid].append(header)
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomSeriesError(f"{directory}: no series {series_uid}; found {_describe(groups)}")
        chosen = groups[series_uid]
        if chosen[0].modality != "CT":
            raise DicomSeriesError(f"{directory}: series {series_uid} is {chosen[0].modality or 'of no modality'}, not CT")
    else:
        ct = {uid: [h for h in g if not h.is_localizer] for uid, g in groups.items() if g[0].modality == "CT"}
        ct = {uid: g for uid, g in ct.items() if g}
        if not ct:
            raise DicomSeriesError(f"{directory}: no CT series (found {_describe(groups)})")
        series_uid = max(ct, key=lambda uid: len(ct[uid]))
        others = {uid: g for uid, g in groups.items() if uid != series_uid}
        if others:
            warnings.warn(
                f"{directory}: reading CT series {series_uid} ({len(ct[series_uid])} slices); also found "
                f"{_describe(others)} (choose with series_uid / --series-uid)",
                DicomSeriesWarning,
                stacklevel=2,
            )
        chosen = groups[series_uid]
    localizers = [h for h in chosen if h.is_localizer]
    if localizers:
        warnings.warn(
            f"{directory}: dropped {len(localizers)} localiser (scout) image(s) from series {series_uid}",
            DicomSeriesWarning,
            stacklevel=2,
        )
    return order_slices([h for h in chosen if not h.is_localizer], directory)


def _check_same(slices: Sequence[SliceHeader], directory, attribute: str, what: str, atol: float = 0.0) -> None:
    first = getattr(slices[0], attribute)
    for s in slices[1:]:
        value = getattr(s, attribute)
        same = value == first if atol == 0 else np.allclose(value, first, atol=atol)
        if not same:
            raise DicomSeriesError(f"{directory}: mixed {what} in one series: {first} ({slices[0].path.name}) vs {value} ({s.path.name})")


def order_slices(slices: Sequence[SliceHeader], directory: str | Path) -> DicomSeries:
    """Sort one series' slices along their normal and check that they form a regular volume."""
    if not slices:
        raise DicomSeriesError(f"{directory}: the series has only localiser images")
    undecodable = sorted({s.transfer_syntax for s in slices} - DECODABLE_TRANSFER_SYNTAXES)
    if undecodable:
        name = pydicom.uid.UID(undecodable[0]).name
        raise DicomSeriesError(f"{directory}: compressed with {name} ({undecodable[0]}), which cannot be decoded here; export the series uncompressed")
    for s in slices:
        for attribute in ("position_mm", "orientation", "pixel_spacing_mm"):
            if getattr(s, attribute) is None:
                raise DicomSeriesError(f"{s.path}: no valid {attribute} (ImagePositionPatient / ImageOrientationPatient / PixelSpacing)")
    if len(slices) < 2:
        raise DicomSeriesError(f"{directory}: the series has a single slice; a 3D CT series is needed")
    _check_same(slices, directory, "orientation", "orientations (ImageOrientationPatient)", atol=1e-4)
    _check_same(slices, directory, "size", "image sizes (Rows x Columns)")
    _check_same(slices, directory, "pixel_spacing_mm", "pixel spacings", atol=1e-4)
    orientation = np.array(slices[0].orientation)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([s.position_mm for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    positions, files = positions[order], [slices[i].path for i in order]
    gaps = np.diff(positions @ normal)
    spacing = float(np.median(gaps))
    duplicated = np.flatnonzero(gaps < max(1e-3, 0.01 * spacing))
    if duplicated.size:
        k = duplicated[0]
        raise DicomSeriesError(f"{directory}: duplicated slice position {np.round(positions[k], 3).tolist()} in {files[k].name} and {files[k + 1].name}")
    missing = np.flatnonzero(gaps >= _MISSING_GAP * spacing)
    if missing.size:
        k = missing[0]
        n_missing = round(gaps[k] / spacing) - 1
        raise DicomSeriesError(
            f"{directory}: missing slice(s): a gap of {gaps[k]:.2f} mm between {files[k].name} and {files[k + 1].name} "
            f"where the spacing is {spacing:.2f} mm (about {n_missing} slice(s) absent)"
        )
    deviation = float(np.max(np.abs(gaps - spacing)) / spacing)
    if deviation > _UNEVEN_LIMIT:
        raise DicomSeriesError(f"{directory}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm); resample it to even spacing first")
    if deviation > _UNEVEN_TOLERANCE:
        warnings.warn(
            f"{directory}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm); using the mean",
            DicomSeriesWarning,
            stacklevel=2,
        )
    stack = positions[-1] - positions[0]
    tilt = float(np.degrees(np.arccos(np.clip(abs(stack @ normal) / np.linalg.norm(stack), -1.0, 1.0))))
    if tilt > _MAX_TILT_DEG:
        raise DicomSeriesError(f"{directory}: gantry tilt of {tilt:.1f} degrees (slices are not stacked along their normal); reformat to an untilted series first")
    return DicomSeries(
        series_uid=slices[0].series_uid,
        files=tuple(files),
        positions_mm=positions,
        row_direction=row_dir,
        column_direction=col_dir,
        pixel_spacing_mm=slices[0].pixel_spacing_mm,  # type: ignore[arg-type]
        slice_spacing_mm=float(np.linalg.norm(stack) / (len(files) - 1)),
        transfer_syntax=slices[0].transfer_syntax,
        fits_int16=all(s.integer_rescale and s.hu_range[0] >= -32768 and s.hu_range[1] <= 32767 for s in slices),
    )


def damaged_slice(series: DicomSeries) -> str | None:
    """Why one of the series' files has unusable pixel data (``None`` if all look whole).

    Used after a decoder failure to name the file; uncompressed pixel data must have the length
    Rows x Columns x BitsAllocated / 8.
    """
    for path in series.files:
        try:
            ds = pydicom.dcmread(path)
            data = ds.get("PixelData")
        except Exception as err:
            return f"{path}: not a readable DICOM file ({type(err).__name__}: {err})"
        if data is None:
            return f"{path}: no pixel data"
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8 * int(ds.get("SamplesPerPixel", 1))
            if len(data) < expected:
                return f"{path}: pixel data truncated ({len(data)} of {expected} bytes)"
    return None


def find_ct_series(directory: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Scan ``directory`` and return its CT series, ordered and checked (see the module table)."""
    return choose_series(scan_directory(directory), directory, series_uid)
