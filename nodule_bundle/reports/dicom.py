"""The report as DICOM, for a PACS: a Segmentation (SEG) of the nodule masks and a Comprehensive 3D SR
measurement report (TID 1500) of their findings, both made with highdicom from the source CT series.

``nodule_labels.seg.dcm``: one segment per nodule (segment number = the nodule's ``label_value`` in
``nodule_labels.nii.gz``), one frame per source slice, on the source series' own geometry.
``nodule_labels.sr.dcm``: per nodule a volumetric finding (pulmonary nodule, its tracking identifier and
UID, the segment it refers to) with long axis, short axis, mean diameter, volume, solid component,
texture, malignancy probability and Lung-RADS v2022 category, the bundle's name and version as the
algorithm. The patient and study come from the source series, as a PACS needs them. On a follow-up
(:mod:`nodule_bundle.followup.report`) a nodule seen before keeps the prior finding's tracking UID, and
its finding adds the change since the prior scan and the volume doubling time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, SpatialResample
from pydicom.sr.codedict import codes

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.geometry import LPS_TO_RAS
from nodule_bundle.core.io_utils import atomic_path
from nodule_bundle.reading.dicom_series import DicomSeries, find_ct_series

SEG_NAME, SR_NAME = "nodule_labels.seg.dcm", "nodule_labels.sr.dcm"
SR_SERIES_DESCRIPTION = "Lung nodules (measurements)"  # how a PACS query finds the bundle's reports
CODING_SCHEME = "99NODBUNDLE"  # the bundle's private coding scheme, for what DICOM's vocabularies do not name
LUNG_RADS = ("LUNGRADS", "Lung-RADS v2022 category")
TEXTURE = ("TEXTURE", "Nodule texture")
SOLID_COMPONENT = ("SOLIDDIAM", "Solid component mean diameter")
NODULE_COUNT = ("NODULECOUNT", "Number of lung nodules found")
FOLLOWUP_STATUS = ("FUSTATUS", "Change since the prior scan")  # new, growing, stable, shrinking (follow-ups)
VOLUME_DOUBLING_TIME = ("VDT", "Volume doubling time")


def _code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, CODING_SCHEME, meaning)


#: The patient and study attributes a SEG and SR copy from their source, type 2 (present, maybe empty).
SOURCE_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                 "StudyID", "AccessionNumber")  # fmt: skip


def read_source_series(dicom_dir: str | Path, series_uid: str | None = None) -> tuple[DicomSeries, list[pydicom.Dataset]]:
    """The CT series the report is about (:func:`~nodule_bundle.reading.dicom_series.find_ct_series`) and its
    slices' headers (no pixel data), in slice order; a type 2 patient or study attribute a scanner left out is empty
    in these datasets (the files are not touched), as the SEG and SR must carry it."""
    series = find_ct_series(dicom_dir, series_uid)
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in series.files]  # the headers are all a SEG and SR take
    for dataset in sources:
        for keyword in SOURCE_TYPE_2:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
    return series, sources


def frames_from_label_map(label_map_path: str | Path, series: DicomSeries, first: pydicom.Dataset) -> np.ndarray:
    """``nodule_labels.nii.gz`` (on the grid the scan was read on) carried, nearest, onto the source
    series (``first``: its first slice's dataset): ``[slices, rows, columns]`` uint8, frame ``k`` the
    series' slice ``k``."""
    labels = LoadImage(image_only=True, ensure_channel_first=True, reader="NibabelReader")(str(label_map_path))
    target = torch.as_tensor(LPS_TO_RAS @ series.affine_lps, dtype=torch.float64)  # voxel [column, row, slice] -> RAS mm
    shape = (int(first.Columns), int(first.Rows), len(series.files))
    on_series = SpatialResample(mode="nearest", padding_mode="zeros")(MetaTensor(labels.float(), affine=labels.affine), dst_affine=target, spatial_size=shape)
    return np.ascontiguousarray(np.rint(on_series[0].numpy()).astype(np.uint8).transpose(2, 1, 0))


def nodule_segmentation(sources: Sequence[pydicom.Dataset], frames: np.ndarray, nodules: Sequence[Mapping], model: Mapping) -> hd.seg.Segmentation:
    """A binary SEG with one segment per nodule that has a ``label_value`` (its number there)."""
    algorithm = hd.AlgorithmIdentificationSequence(name=model["name"], version=str(model["version"]), family=codes.DCM.ArtificialIntelligence)
    labelled = [n for n in nodules if n.get("label_value")]
    if not labelled:
        raise NoduleBundleError(f"{sources[0].SeriesInstanceUID}: no nodule has a mask to put in a DICOM SEG")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=int(n["label_value"]), segment_label=f"nodule {n['nodule_id']}"[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=n.get("tracking_uid") or hd.UID(), tracking_id=f"nodule {n['nodule_id']}"[:64],
        )
        for n in labelled
    ]  # fmt: skip
    present = set(np.unique(frames)) - {0}
    missing = sorted({int(n["label_value"]) for n in labelled} - present)
    if missing:
        raise NoduleBundleError(f"{sources[0].SeriesInstanceUID}: label values {missing} are not in the label map carried onto the series")
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=model["name"], manufacturer_model_name=model["name"][:64],
        software_versions=str(model["version"]), device_serial_number="0", series_description="Lung nodules (masks)",
        omit_empty_frames=False,
    )  # fmt: skip


def _measurement(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)


def nodule_measurement_report(
    sources: Sequence[pydicom.Dataset], seg: hd.seg.Segmentation | None, nodules: Sequence[Mapping], model: Mapping
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR (TID 1500) with one volumetric finding per segment of ``seg``; without a
    ``seg`` (no nodule found), a report that the scan was read and holds no finding."""
    algorithm = hd.sr.AlgorithmIdentification(name=model["name"], version=str(model["version"]))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=model["name"]),
    )
    groups = []
    for segment in seg.SegmentSequence if seg is not None else ():
        nodule = next(n for n in nodules if int(n.get("label_value") or 0) == segment.SegmentNumber)
        mm, mm3 = codes.UCUM.Millimeter, codes.UCUM.CubicMillimeter
        measurements = [
            _measurement(name, nodule[key], unit, algorithm)
            for name, key, unit in (
                (codes.SCT.LongAxis, "measured_long_axis_mm", mm), (codes.SCT.ShortAxis, "measured_short_axis_mm", mm),
                (codes.SCT.Diameter, "measured_mean_diameter_mm", mm), (codes.SCT.Volume, "measured_volume_mm3", mm3),
                (_code(*SOLID_COMPONENT), "measured_solid_mean_diameter_mm", mm),
                (codes.DCM.ProbabilityOfCancer, "malignancy_probability", codes.UCUM.NoUnits),
                (_code(*VOLUME_DOUBLING_TIME), "vdt_days", hd.sr.CodedConcept("d", "UCUM", "day")),
            )
            if nodule.get(key) is not None
        ]  # fmt: skip
        evaluations = [
            hd.sr.QualitativeEvaluation(name=_code(*concept), value=_code(str(nodule[key]).upper(), str(nodule[key])))
            for concept, key in ((LUNG_RADS, "lung_rads_category"), (TEXTURE, "texture"), (FOLLOWUP_STATUS, "followup_status"))
            if nodule.get(key)
        ]  # fmt: skip
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier=segment.TrackingID),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=segment.SegmentNumber,
                    source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID),
                ),
                finding_type=codes.SCT.Nodule, finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], algorithm_id=algorithm,
                measurements=measurements, qualitative_evaluations=evaluations,
            )
        )  # fmt: skip
    count = hd.sr.MeasurementsAndQualitativeEvaluations(  # the scan's own finding, also when it is "none"
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lung nodules"),
        measurements=[_measurement(_code(*NODULE_COUNT), len(groups), hd.sr.CodedConcept("{nodules}", "UCUM", "nodules"), algorithm)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[count, *groups],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, *([seg] if seg is not None else [])], content=report, series_instance_uid=hd.UID(), series_number=902, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=model["name"], series_description=SR_SERIES_DESCRIPTION, is_complete=True,
        is_final=False, is_verified=False,
    )  # fmt: skip


def scan_segmentation(
    folder: str | Path, scan: Mapping, dicom_dir: str | Path, series_uid: str | None, model: Mapping
) -> tuple[list[pydicom.Dataset], hd.seg.Segmentation | None]:
    """The source series' slice headers and the SEG of the scan's nodules (``report.json``'s scan, its
    ``label_value``s, and ``nodule_labels.nii.gz`` in ``folder``); no SEG when no nodule has a mask."""
    series, sources = read_source_series(dicom_dir, series_uid)
    if not any(n.get("label_value") for n in scan["nodules"]):
        return sources, None
    frames = frames_from_label_map(Path(folder) / "nodule_labels.nii.gz", series, sources[0])
    return sources, nodule_segmentation(sources, frames, scan["nodules"], model)


def save_dataset(path: Path, dataset: pydicom.Dataset) -> Path:
    """Write ``dataset`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        dataset.save_as(tmp)
    return path


def write_dicom_report(folder: str | Path, scan: Mapping, dicom_dir: str | Path, series_uid: str | None, model: Mapping,
                       out: str | Path | None = None) -> list[Path]:  # fmt: skip
    """``nodule_labels.seg.dcm`` (when a nodule has a mask) and ``nodule_labels.sr.dcm`` in ``out``
    (default ``folder``, which holds the scan's ``nodule_labels.nii.gz``), each atomically
    (:func:`scan_segmentation`, :func:`nodule_measurement_report`), for the source series
    ``series_uid`` in ``dicom_dir``. ``model``: ``{"name", "version"}``; a nodule's ``tracking_uid``,
    where it has one, is kept."""
    sources, seg = scan_segmentation(Path(folder), scan, dicom_dir, series_uid, model)
    sr = nodule_measurement_report(sources, seg, scan["nodules"], model)
    out = Path(out or folder)
    return [save_dataset(out / name, dataset) for name, dataset in ((SEG_NAME, seg), (SR_NAME, sr)) if dataset is not None]


def segment_tracking_uids(folder: str | Path) -> dict[int, str]:
    """The tracking UID of each segment (by number) of the ``nodule_labels.seg.dcm`` in ``folder``;
    empty without one."""
    path = Path(folder) / SEG_NAME
    if not path.is_file():
        return {}
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    return {int(item.SegmentNumber): str(item.TrackingUID) for item in seg.SegmentSequence if "TrackingUID" in item}
