"""Real-geometry follow-ups: a LIDC-IDRI patient's synthetic chest (:mod:`nodule_bundle.data.real_geometry`)
scanned again, the readers' consensus outlines grown or shrunk by a known volume doubling time.

Time point 0 is the real-geometry scan itself. Each later one poses the same chest as the phantom's
follow-ups do (:func:`~nodule_bundle.data.followup_phantom.draw_pose`: turned, shifted, breathing,
another slice thickness and pixel size; the slice profile that thickness), and draws each outline
anew at its posed centre: the consensus mask scaled by ``2 ** (days / (3 VDT))`` along each axis
and resampled (linear, at 50 %) onto the new grid, its densities, calcification and vessel drawn
from the generator states of the baseline. The VDT of each nodule is drawn as the phantom's
(malignant by the readers' mean rating 100-500 days; the others mostly stable, some slowly growing,
some shrinking until gone, under 3 mm); no new nodules appear. The reference sizes at each time
point are the scaled mask's own, on the new grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import ndimage as ndi

from nodule_bundle.data.followup_phantom import RESOLVED_BELOW_MM, FollowupConfig, capped_vdt, draw_pose, draw_vdt_days, followup_series_uid, generator_in, schedule
from nodule_bundle.data.phantom import SLICE_THICKNESSES_MM, Canvas, PhantomScan, scanner
from nodule_bundle.data.real_geometry import EmbeddedNodule, OutlinedScan, RealGeometryConfig, draw_real_patient, outline_hu, reference_sizes, vessel_along
from nodule_bundle.measuring.measure import axial_diameters

INPLANE_MM = (0.55, 0.9)  # the follow-up's pixel size, within LIDC-IDRI's range


@dataclass(frozen=True)
class RealFollowupNodule(EmbeddedNodule):
    """A real outline at one time point of a series: which nodule it is across time and its true VDT."""

    track_id: str = ""
    vdt_days: float = math.inf

    @property
    def solid_mm(self) -> float:
        return self.solid_mean_diameter_mm

    def csv_columns(self) -> dict:
        return {**super().csv_columns(), "track_id": self.track_id, "vdt_days": round(self.vdt_days, 1)}


def make_real_followup_scan(seed: int, index: int, timepoint: int, source: OutlinedScan, cfg: RealGeometryConfig = RealGeometryConfig(),
                            fcfg: FollowupConfig = FollowupConfig()) -> PhantomScan:  # fmt: skip
    """Time point ``timepoint`` (0: the baseline, :func:`~nodule_bundle.data.real_geometry.render_scan`'s
    scan) of real-geometry patient ``index`` (``source``) of the series drawn with ``seed``."""
    if not 0 <= timepoint < fcfg.timepoints:
        raise ValueError(f"timepoint must be in 0..{fcfg.timepoints - 1}, got {timepoint}")
    baseline, patient = draw_real_patient(seed, index, source, cfg)
    dates = schedule(seed, index, fcfg)
    date, days = dates[timepoint]
    rng = np.random.default_rng([seed, index, 0, 1])
    first = {n.outline.number: n for n in baseline.nodules}
    vdt = {number: capped_vdt(draw_vdt_days(rng, n.nodule.malignancy == 1, False), n.nodule.diameter_mm, dates[-1][1]) for number, n in sorted(first.items())}

    def record(n: EmbeddedNodule, **changes) -> RealFollowupNodule:
        values = {f.name: getattr(n, f.name) for f in fields(EmbeddedNodule)} | changes
        return RealFollowupNodule(**values, track_id=f"{source.patient_id}-n{n.outline.number}", vdt_days=vdt[n.outline.number])

    if timepoint == 0:
        return replace(baseline, nodules=tuple(record(n) for n in baseline.nodules), study_date=date)
    rng = np.random.default_rng([seed, index, timepoint])
    pose = draw_pose(rng, fcfg, cfg.fov_mm, INPLANE_MM, SLICE_THICKNESSES_MM, patient.anatomy_hu.shape, patient.spacing_mm, patient.origin_mm)
    canvas = Canvas(pose.shape, pose.spacing, pose.origin)
    canvas.hu = pose.resample(patient.anatomy_hu, patient.spacing_mm, patient.origin_mm)
    lungs = pose.resample(patient.lung_occupancy, patient.spacing_mm, patient.origin_mm)
    seriesuid = followup_series_uid(seed, index, timepoint)
    nodules, label_map = [], np.zeros(pose.shape, np.uint8)
    for outline, start, density_state, vessel_state in patient.placed:
        scale = 2.0 ** (days / (3.0 * vdt[outline.number]))
        mask = ndi.zoom(outline.mask.astype(np.float32), scale * patient.spacing_mm / pose.spacing, order=1) > 0.5
        if not mask.any():
            continue
        long_axis, short_axis, volume = reference_sizes(mask, pose.spacing)
        if (long_axis + short_axis) / 2.0 < RESOLVED_BELOW_MM:
            continue
        centre = pose.point(patient.origin_mm + (start + np.argwhere(outline.mask).mean(0)) * patient.spacing_mm)
        first_voxel = np.round((centre - pose.origin) / pose.spacing - np.argwhere(mask).mean(0)).astype(int)
        if np.any(first_voxel < 0) or np.any(first_voxel + mask.shape > np.array(pose.shape)):
            continue  # carried out of the field of view
        box = tuple(slice(a, a + n) for a, n in zip(first_voxel, mask.shape))
        grown = replace(outline, mask=mask)
        hu, solid = outline_hu(generator_in(density_state), grown, pose.spacing)
        canvas.hu[box] = np.where(mask, hu, canvas.hu[box])
        if vessel_state is not None:
            vessel_along(generator_in(vessel_state), canvas, mask, first_voxel, lungs)
        label_map[box][mask] = len(nodules) + 1
        solid_long, solid_short = axial_diameters(solid, float(pose.spacing[0])) if solid.any() else (0.0, 0.0)
        before = first[outline.number]
        nodule = replace(before.nodule, nodule_id=f"{before.nodule.nodule_id}-t{timepoint}", seriesuid=seriesuid,
                         center_world_mm=tuple(round(float(v), 3) for v in pose.origin + (first_voxel + np.argwhere(mask).mean(0)) * pose.spacing),
                         diameter_mm=round((long_axis + short_axis) / 2.0, 3))  # fmt: skip
        nodules.append(record(before, nodule=nodule, outline=grown, label_value=len(nodules) + 1, long_axis_mm=long_axis, short_axis_mm=short_axis,
                              volume_mm3=volume, solid_mean_diameter_mm=(solid_long + solid_short) / 2.0))  # fmt: skip
    slice_sigma = 1.0 / 2.355  # the slice profile: FWHM = the slice thickness, one slice
    volume_hu = scanner(canvas.hu, pose.spacing, rng, float(rng.uniform(*cfg.noise_hu)), float(rng.uniform(*cfg.psf_mm)), slice_sigma)
    return PhantomScan(seriesuid, volume_hu, tuple(float(s) for s in pose.spacing), tuple(float(o) for o in pose.origin), tuple(nodules),
                       source.patient_id, label_map, date)  # fmt: skip



def write_real_followup_dataset(
    out, scans: int | None, timepoints: int, seed: int = 0, formats=("nifti",), cfg: RealGeometryConfig = RealGeometryConfig(),
    workers: int | None = None, negatives_per_scan: int = 20, min_readers: int = 3,
):  # fmt: skip
    """The first ``scans`` LIDC-IDRI scans' patients (``None``: all) scanned ``timepoints`` times each into
    ``out`` (the layout of :mod:`nodule_bundle.data.synth`, with ``followups.csv``); returns the path of
    ``datalist.json``."""
    from dataclasses import asdict

    from nodule_bundle.data.real_geometry import outlined_scans
    from nodule_bundle.data.synth import write_synthetic_dataset

    if timepoints < 2:
        raise ValueError(f"a follow-up dataset needs timepoints >= 2, got {timepoints}")
    fcfg = FollowupConfig(timepoints=timepoints)
    sources = outlined_scans(scans, min_readers)
    return write_synthetic_dataset(
        out, make_real_followup_scan, [(seed, i, t, source, cfg, fcfg) for i, source in enumerate(sources) for t in range(timepoints)], seed, formats,
        workers, negatives_per_scan, description=f"LIDC-IDRI readers' consensus outlines (>= {min_readers} readers) in synthetic chest CT, follow-ups",
        real_geometry={"seed": seed, "scans": len(sources), "timepoints": timepoints, "min_readers": min_readers, "formats": list(formats),
                       "negatives_per_scan": negatives_per_scan, **asdict(cfg), **asdict(fcfg)},
    )  # fmt: skip
