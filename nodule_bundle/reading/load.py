"""Reading a CT scan into a MONAI item: :class:`LoadCTImaged` (MONAI's ``LoadImaged`` with the bundle's
readers), a header's claimed size checked before the voxels are read, HU checked after."""

from __future__ import annotations

import copy
import inspect
import math
import os
import threading
from collections import OrderedDict

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImaged

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.reading.readers import DicomSeriesReader, NiftiReader

MAX_AIR_HU = -500.0  # every chest CT holds air (lungs, outside the body) far below this
MAX_IMAGE_BYTES = 16 * 2**30  # as float32: a 1024 x 1024 x 4000 scan; a header claiming more is refused unread


class UnreadableImageError(NoduleBundleError):
    """A file that MONAI's readers cannot read as a 3D image."""


def declared_shape(path: str) -> tuple[int, ...] | None:
    """The image size a file's header claims, read without the voxels (NIfTI by nibabel, MHD, NRRD
    and other ITK formats by ITK's ImageIO); ``None`` for a DICOM folder or a header not understood
    (the reader then reports it)."""
    import itk
    import nibabel as nib

    if os.path.isdir(path) or not os.path.isfile(path):
        return None
    try:
        if path.endswith((".nii", ".nii.gz")):
            return tuple(int(v) for v in nib.load(path).header.get_data_shape())
        io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            return None
        io.SetFileName(path)
        io.ReadImageInformation()
        return tuple(int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions()))
    except Exception:  # noqa: BLE001 - an unreadable header is the reader's to report
        return None


def check_declared_size(path: str) -> None:
    """Refuse, before reading, an image whose header claims more than :data:`MAX_IMAGE_BYTES`."""
    shape = declared_shape(path)
    if shape and math.prod(shape) * 4 > MAX_IMAGE_BYTES:
        raise UnreadableImageError(
            f"{path}: the header claims a {' x '.join(map(str, shape))} image ({math.prod(shape) * 4 / 1e9:,.0f} GB as float32), "
            f"more than the {MAX_IMAGE_BYTES / 2**30:.0f} GB this reader allows: a damaged or hostile header; not read"
        )


def _stamp(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_mtime_ns, stat.st_size


class LoadCTImaged(LoadImaged):
    """MONAI's ``LoadImaged`` (same arguments) for CT as it arrives: DICOM directories through
    :class:`~nodule_bundle.reading.readers.DicomSeriesReader` (series chosen, slices ordered by position and
    checked), NIfTI files through :class:`~nodule_bundle.reading.readers.NiftiReader` (MONAI's nibabel reader,
    a faster layout copy), MHD/raw and NRRD through MONAI's readers. A ``reader`` given explicitly is
    used for everything.

    Unreadable files, headers claiming more than :data:`MAX_IMAGE_BYTES` (checked before reading),
    images that are not one 3D volume and images that are not CT in Hounsfield units (NaN/infinite
    voxels; nothing as dark as air, below :data:`MAX_AIR_HU`: an MR, or data without its rescale) raise
    :class:`UnreadableImageError` naming the file, instead of a reader traceback or a silent misread.

    Args:
        series_uid: the DICOM series to read when a directory holds several (default: the CT
            series with the most slices).
        recent_scans: how many of the scans last read to keep in memory (keyed by path, size and
            modification time; each item gets its own copy), for datalists with one item per nodule:
            a scan's items follow each other, and its file is decompressed once, not once a nodule.
    """

    def __init__(self, keys: KeysCollection, *args, series_uid: str | None = None, recent_scans: int = 0, **kwargs):
        super().__init__(keys, *args, **kwargs)
        self.recent_scans = int(recent_scans)
        self._recent: OrderedDict[tuple, dict] = OrderedDict()
        self._recent_lock = threading.Lock()
        dtype = kwargs.get("dtype", np.float32)
        self.dicom_reader = DicomSeriesReader(series_uid=series_uid, dtype=dtype)
        reader_kwargs = {k: v for k, v in kwargs.items() if k not in inspect.signature(LoadImaged.__init__).parameters}  # as LoadImage passes them
        self.nifti_reader = NiftiReader(dtype=dtype, **reader_kwargs)

    def __call__(self, data, reader=None):
        if not self.recent_scans:
            return self._read(data, reader)
        try:
            files = tuple((str(data[k]), *_stamp(os.stat(data[k]))) for k in self.key_iterator(dict(data)))
        except OSError:  # missing or inaccessible: the plain read says so, naming the file
            return self._read(data, reader)
        with self._recent_lock:  # one read at a time: items of one scan wait for it instead of reading it too
            if files not in self._recent:
                d = self._read(data, reader)
                self._recent[files] = {k: v for k, v in d.items() if k in self.keys or k not in data}
                while len(self._recent) > self.recent_scans:
                    self._recent.popitem(last=False)
            self._recent.move_to_end(files)
            read = self._recent[files]
        return {**data, **{k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in read.items()}}

    def _read(self, data, reader=None):
        paths = [str(data[k]) for k in self.key_iterator(dict(data))]
        for path in paths:
            check_declared_size(path)
        if reader is None and self._loader.auto_select:
            if all(os.path.isdir(p) for p in paths):
                reader = self.dicom_reader
            elif all(p.lower().endswith((".nii", ".nii.gz")) for p in paths):
                reader = self.nifti_reader
        try:
            d = super().__call__(data, reader)
        except NoduleBundleError:
            raise
        except Exception as err:
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise UnreadableImageError(f"{', '.join(paths)}: cannot read image ({reason})") from err
        for key in self.key_iterator(d):
            if d[key].ndim != 4 or d[key].shape[0] != 1:
                raise UnreadableImageError(f"{data[key]}: expected one 3D volume, got image shape {tuple(d[key].shape)} (channel first)")
            darkest, brightest = (float(v) for v in torch.aminmax(d[key].as_tensor()))  # one pass; NaN and Inf propagate
            if not (math.isfinite(darkest) and math.isfinite(brightest)):
                raise UnreadableImageError(f"{data[key]}: NaN or infinite voxel values")
            if darkest > MAX_AIR_HU:
                raise UnreadableImageError(
                    f"{data[key]}: not a CT in Hounsfield units: darkest voxel {darkest:.0f}, but air is about -1000 HU "
                    "(an MR image, or stored values without their rescale slope/intercept?)"
                )
        return d
