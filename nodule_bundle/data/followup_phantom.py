"""Phantom follow-ups: the same patient scanned again, months later, with known change.

Time point 0 is the phantom's own scan (:func:`~nodule_bundle.data.phantom.make_scan`, voxel for voxel).
Each later time point re-uses its anatomy (:func:`~nodule_bundle.data.phantom.draw_patient`) and puts
the patient in the scanner anew, ``A(q) = R S (q - c) + c + t`` from the baseline's frame to the
scanner's (world mm, LPS):

- **pose**: ``R`` turns up to ``rotation_deg`` about the body's long axis and half that about the
  other two; ``t`` shifts the patient by up to ``shift_mm`` (the table);
- **breathing**: ``S`` scales the chest about its centre ``c`` by ``s`` along z (the diaphragm,
  within ``breathing``), a third of ``s - 1`` along y and a quarter along x;
- **scanner**: another slice thickness than the baseline's and another pixel size, the grid centred
  on the patient; the anatomy is resampled (linear) through ``A`` onto it.

The nodules are then drawn anew on that grid at their posed centres (their shapes from the same
generator states as at baseline, not turned with the patient: a few degrees), each grown by its own
volume doubling time (VDT) since the baseline, ``size * 2 ** (days / (3 VDT))``: malignant nodules
fast (100-500 days), benign ones mostly stable (VDT infinite), some slowly growing (600-1500 days),
some shrinking (negative VDT, halving in 60-200 days) until they are gone (resolved: under 3 mm);
no nodule grows beyond 30 mm. New nodules (``new_nodules`` per follow-up, 3-8 mm) appear and
follow their own course. Each nodule keeps its ``track_id`` at every time point; its reference
size (mean axial diameter and volume of the drawn body) is recorded at each, and the truth of any
change is computed from those.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, replace

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage as ndi

from nodule_bundle.data.phantom import (
    SLICE_THICKNESSES_MM,
    Canvas,
    PhantomConfig,
    PhantomNodule,
    PhantomPatient,
    PhantomScan,
    draw_patient,
    nodule_reach,
    phantom_series_uid,
    place_nodules,
    render_nodule,
    scanner,
)  # fmt: skip

MAX_DIAMETER_MM = 30.0  # no nodule grows beyond the phantom's largest
RESOLVED_BELOW_MM = 3.0  # a shrinking nodule smaller than this is gone (the phantom draws none smaller)


@dataclass(frozen=True)
class FollowupConfig:
    """How a patient's later scans differ from the baseline (days, degrees, mm)."""

    timepoints: int = 2
    intervals_days: tuple[int, ...] = (90, 180, 365)  # Lung-RADS follow-up intervals, each +- 14 days
    rotation_deg: float = 4.0
    shift_mm: tuple[float, float, float] = (15.0, 15.0, 30.0)
    breathing: tuple[float, float] = (0.94, 1.04)
    new_nodules: tuple[int, int] = (0, 2)


@dataclass(frozen=True)
class Course:
    """One nodule's course over the series: its ``track_id``, the time point it ``appears`` at, the size
    drawn for it then (mm), its VDT (days; ``inf`` stable, negative shrinking), its centre in the baseline's
    frame (world mm), its traits and the generator state its shape is drawn from."""

    track_id: str
    appears: int
    drawn_mm: float
    vdt_days: float
    center_mm: np.ndarray
    nodule: PhantomNodule
    state: dict

    def drawn_size_at(self, days_since_appearing: float) -> float:
        return self.drawn_mm * 2.0 ** (days_since_appearing / (3.0 * self.vdt_days))

    def reach_mm(self, days_since_appearing: float) -> float:
        """How far from its centre it reaches, at its largest until then."""
        return nodule_reach(max(self.drawn_mm, self.drawn_size_at(days_since_appearing)), self.nodule.margin)


@dataclass(frozen=True)
class FollowupNodule(PhantomNodule):
    """A phantom nodule at one time point of a series: which nodule it is across time (``track_id``),
    its reference volume (mm3, of the drawn body) and solid component's diameter (mm: the mean
    diameter of a solid nodule, the dense core's of a part-solid one, 0 for ground glass), and its true
    VDT (days)."""

    track_id: str = ""
    volume_mm3: float = math.nan
    solid_mm: float = math.nan
    vdt_days: float = math.inf

    def csv_columns(self) -> dict:
        return {**super().csv_columns(), "track_id": self.track_id, "reference_volume_mm3": round(self.volume_mm3, 1),
                "reference_solid_mm": round(self.solid_mm, 2), "vdt_days": round(self.vdt_days, 1)}  # fmt: skip


def generator_in(state: dict) -> np.random.Generator:
    """A generator in ``state``: the draws a shape or density was made with at baseline, again."""
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = state
    return generator


def patient_id(seed: int, index: int) -> str:
    return f"phantom-{seed}-{index:04d}"


def followup_series_uid(seed: int, index: int, timepoint: int) -> str:
    """The series UID of a time point (the baseline's is the phantom scan's own)."""
    if timepoint == 0:
        return phantom_series_uid(seed, index)
    return generate_uid(entropy_srcs=["nodule-bundle-phantom-followup", str(seed), str(index), str(timepoint)])


def schedule(seed: int, index: int, cfg: FollowupConfig = FollowupConfig()) -> list[tuple[str, int]]:
    """Each time point's study date (YYYYMMDD) and days since the baseline."""
    rng = np.random.default_rng([seed, index, 0])
    baseline = datetime.date(2020, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 5 * 365)))
    days = [0]
    for _ in range(cfg.timepoints - 1):
        days.append(days[-1] + int(rng.choice(cfg.intervals_days)) + int(rng.integers(-14, 15)))
    return [((baseline + datetime.timedelta(days=d)).strftime("%Y%m%d"), d) for d in days]


def draw_vdt_days(rng: np.random.Generator, malignant: bool, new: bool) -> float:
    """A VDT for a nodule's course: malignant fast; benign stable, slowly growing or shrinking (new
    benign nodules, often inflammatory, half of them shrinking)."""
    if malignant:
        return float(np.exp(rng.uniform(np.log(100.0), np.log(500.0))))
    draw = rng.random()
    if draw < (0.5 if new else 0.2):
        return -float(np.exp(rng.uniform(np.log(60.0), np.log(200.0))))
    if draw < (0.6 if new else 0.4):
        return float(np.exp(rng.uniform(np.log(600.0), np.log(1500.0))))
    return math.inf


def capped_vdt(vdt: float, drawn_mm: float, days: float) -> float:
    """``vdt``, lengthened where the nodule would outgrow :data:`MAX_DIAMETER_MM` within ``days``."""
    if vdt <= 0 or drawn_mm >= MAX_DIAMETER_MM or days <= 0:
        return vdt
    return max(vdt, days / (3.0 * math.log2(MAX_DIAMETER_MM / drawn_mm)))


def courses(seed: int, index: int, patient: PhantomPatient, cfg: PhantomConfig, fcfg: FollowupConfig) -> list[Course]:
    """Every nodule's course: the baseline's, then those new at each follow-up."""
    days = [d for _, d in schedule(seed, index, fcfg)]
    pid = patient_id(seed, index)
    rng = np.random.default_rng([seed, index, 0, 1])
    found = [
        Course(f"{pid}-{k:02d}", 0, pn.nodule.diameter_mm, capped_vdt(draw_vdt_days(rng, bool(pn.nodule.malignancy), False), pn.nodule.diameter_mm, days[-1]),
               np.asarray(center), pn, state)
        for k, (center, pn, state) in enumerate(patient.drawn)
    ]  # fmt: skip
    for t in range(1, fcfg.timepoints):
        rng = np.random.default_rng([seed, index, t, 0])
        small = replace(cfg, nodules_per_scan=fcfg.new_nodules, diameter_range_mm=(3.0, 8.0))
        for center, pn in place_nodules(rng, small, patient.lungs, f"{pid}-new{t}"):
            reach = nodule_reach(pn.nodule.diameter_mm, pn.margin) + 2.0
            if any(np.linalg.norm(center - c.center_mm) < reach + c.reach_mm(days[-1] - days[c.appears]) for c in found):
                continue  # where a nodule is, or will grow to: no new one there
            vdt = capped_vdt(draw_vdt_days(rng, bool(pn.nodule.malignancy), True), pn.nodule.diameter_mm, days[-1] - days[t])
            state = np.random.default_rng([seed, index, t, 1 + len(found)]).bit_generator.state
            found.append(Course(f"{pid}-{len(found):02d}", t, pn.nodule.diameter_mm, vdt, np.asarray(center), pn, state))
    return found


@dataclass(frozen=True)
class Pose:
    """Where a follow-up puts the patient: ``A(q) = linear (q - centre) + centre + shift`` from the
    baseline's frame to the scanner's (world mm; ``linear`` is ``R S``), and the new scanner grid."""

    linear: np.ndarray
    shift: np.ndarray
    centre: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]
    origin: np.ndarray

    def point(self, q: np.ndarray) -> np.ndarray:
        return self.linear @ (np.asarray(q, dtype=np.float64) - self.centre) + self.centre + self.shift

    def resample(self, array: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """``array`` (on the baseline's grid of ``spacing`` from ``origin``) seen through the pose on the
        new grid (linear; beyond the baseline's grid its border continues)."""
        inverse = np.linalg.inv(self.linear)
        return ndi.affine_transform(
            array, np.diag(1 / spacing) @ inverse @ np.diag(self.spacing),
            np.diag(1 / spacing) @ (inverse @ (self.origin - self.centre - self.shift) + self.centre - origin),
            output_shape=self.shape, order=1, mode="nearest",
        ).astype(np.float32)  # fmt: skip


def draw_pose(rng: np.random.Generator, cfg: FollowupConfig, fov_mm, inplane_mm: tuple[float, float], thicknesses: tuple[float, ...],
              baseline_shape, baseline_spacing: np.ndarray, baseline_origin: np.ndarray) -> Pose:  # fmt: skip
    """A follow-up's pose, breathing and scanner grid: pixels of ``inplane_mm``, a slice thickness of
    ``thicknesses`` other than the baseline's (of :data:`SLICE_THICKNESSES_MM` if none is), the grid
    of ``fov_mm`` centred on the patient within a few mm."""
    inplane = rng.uniform(*inplane_mm)
    others = [t for t in thicknesses if t != baseline_spacing[2]] or [t for t in SLICE_THICKNESSES_MM if t != baseline_spacing[2]]
    spacing = np.array([inplane, inplane, float(rng.choice(others))])
    shape = tuple(int(v) for v in np.round(np.asarray(fov_mm) / spacing))
    ax, ay, az = np.radians(cfg.rotation_deg * rng.uniform(-1, 1, 3) * np.array([0.5, 0.5, 1.0]))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    s = rng.uniform(*cfg.breathing)
    linear = rz @ ry @ rx @ np.diag([1 + (s - 1) / 4, 1 + (s - 1) / 3, s])
    shift = rng.uniform(-1, 1, 3) * np.asarray(cfg.shift_mm)
    centre = baseline_origin + baseline_spacing * (np.array(baseline_shape) - 1) / 2
    origin = centre + shift + rng.uniform(-1, 1, 3) * np.array([5.0, 5.0, 2.0]) - spacing * (np.array(shape) - 1) / 2
    return Pose(linear, shift, centre, spacing, shape, origin)  # type: ignore[arg-type]


def make_followup_scan(seed: int, index: int, timepoint: int, cfg: PhantomConfig = PhantomConfig(), fcfg: FollowupConfig = FollowupConfig()) -> PhantomScan:
    """Time point ``timepoint`` (0: the baseline) of phantom patient ``index`` of the series drawn
    with ``seed``: its scan with :class:`FollowupNodule` records, ``patient_id`` and ``study_date``."""
    if not 0 <= timepoint < fcfg.timepoints:
        raise ValueError(f"timepoint must be in 0..{fcfg.timepoints - 1}, got {timepoint}")
    baseline, patient = draw_patient(seed, index, cfg)
    found = courses(seed, index, patient, cfg, fcfg)
    dates = schedule(seed, index, fcfg)
    date, days = dates[timepoint]
    pid = patient_id(seed, index)
    if timepoint == 0:
        nodules = [FollowupNodule(pn.nodule, pn.margin, pn.calcified, c.track_id, volume, solid, c.vdt_days)
                   for c, pn, (_, volume, solid) in zip(found, baseline.nodules, patient.sizes)]  # fmt: skip
        return replace(baseline, nodules=tuple(nodules), patient_id=pid, study_date=date)
    rng = np.random.default_rng([seed, index, timepoint])
    pose = draw_pose(rng, fcfg, cfg.fov_mm, cfg.inplane_spacing_mm, cfg.slice_thicknesses_mm, patient.anatomy_hu.shape, patient.spacing_mm, patient.origin_mm)
    canvas = Canvas(pose.shape, pose.spacing, pose.origin)
    canvas.hu = pose.resample(patient.anatomy_hu, patient.spacing_mm, patient.origin_mm)
    seriesuid = followup_series_uid(seed, index, timepoint)
    nodules, label_map = [], np.zeros(pose.shape, np.uint8)
    for course in (c for c in found if c.appears <= timepoint):
        size = course.drawn_size_at(days - dates[course.appears][1])
        if size < RESOLVED_BELOW_MM:
            continue
        center = pose.point(course.center_mm)
        record = replace(course.nodule.nodule, nodule_id=f"{seriesuid[-6:]}-{len(nodules):02d}", seriesuid=seriesuid,
                         center_world_mm=tuple(round(float(v), 3) for v in center), diameter_mm=size)  # fmt: skip
        (reference, volume, solid), box, mask = render_nodule(canvas, generator_in(course.state), center, replace(course.nodule, nodule=record))
        label_map[box][mask] = len(nodules) + 1
        record = replace(record, diameter_mm=round(float(reference), 3))
        nodules.append(FollowupNodule(record, course.nodule.margin, course.nodule.calcified, course.track_id, volume, solid, course.vdt_days))
    volume_hu = scanner(canvas.hu, pose.spacing, rng, float(rng.uniform(*cfg.noise_hu)))
    return PhantomScan(seriesuid, volume_hu, tuple(float(s) for s in pose.spacing), tuple(float(o) for o in pose.origin), tuple(nodules), pid, label_map, date)
