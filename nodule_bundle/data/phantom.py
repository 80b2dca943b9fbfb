"""Synthetic chest-CT phantom with pulmonary nodules and ground truth.

A scan is built in world millimetres (LPS, axes aligned with the voxel grid as in an axial CT):
air, body with subcutaneous fat and muscle, spine and ribs, mediastinum, two lungs (~-850 HU) with
airways (air lumen, soft-tissue wall) and branching vessels (tubular, the main false-positive source),
then nodules. A scanner point-spread blur and correlated noise follow, and the result is rounded to
int16 HU. Everything is drawn from ``numpy.random.default_rng([seed, scan_index])``.

Malignancy depends on size *and* on margin/content, so a size-only classifier is good but not perfect:
malignant nodules are larger and mostly lobulated or spiculated; benign ones smaller, mostly smooth and
sometimes calcified. Each nodule's recorded ``diameter_mm`` is what a radiologist would measure on
the drawn body: the Lung-RADS mean of its long and short axial axes, spicules excluded
(:func:`_reference_diameter`); the size drawn for it (3-30 mm) sets only its shape and label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.data import MetaTensor
from pydicom.uid import generate_uid

from nodule_bundle.core.geometry import LPS_TO_RAS
from nodule_bundle.core.nodule import Nodule
from nodule_bundle.measuring.measure import axial_diameters
from nodule_bundle.preprocessing.filters import gaussian_blur

HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_BONE = -1000.0, -850.0, -100.0, 40.0, 600.0
SLICE_THICKNESSES_MM = (1.0, 1.25, 1.5, 2.0, 2.5)


@dataclass(frozen=True)
class PhantomConfig:
    """Size and content of each phantom scan (physical units)."""

    fov_mm: tuple[float, float, float] = (200.0, 170.0, 140.0)
    inplane_spacing_mm: tuple[float, float] = (0.6, 0.8)
    slice_thicknesses_mm: tuple[float, ...] = SLICE_THICKNESSES_MM
    nodules_per_scan: tuple[int, int] = (10, 20)
    diameter_range_mm: tuple[float, float] = (3.0, 30.0)
    noise_hu: tuple[float, float] = (15.0, 35.0)


@dataclass(frozen=True)
class PhantomNodule:
    """Ground truth of one phantom nodule: the record plus the shape that produced its label."""

    nodule: Nodule
    margin: str  # smooth | lobulated | spiculated
    calcified: bool

    def csv_columns(self) -> dict:
        """The columns ``annotations.csv`` gives it beyond the nodule record."""
        return {"shape": self.margin, "calcified": int(self.calcified)}

    def item_fields(self) -> dict:
        """What its datalist item carries beyond :func:`~nodule_bundle.data.datalist.nodule_item`."""
        return {}


@dataclass(frozen=True)
class PhantomScan:
    """A scan volume in HU (int16, indexed [x, y, z]) with its LPS geometry and nodules.

    ``nodules`` are :class:`PhantomNodule` or any record with ``nodule``, ``csv_columns()`` and
    ``item_fields()`` (the real-geometry source's); ``patient_id`` groups scans for the split
    (``None``: the scan is its own patient); ``label_map``, when known, the nodules' reference masks
    on the scan's grid (uint8, nodule ``i`` labelled ``i + 1``); ``study_date`` the date of a scan
    that is one time point of a patient's series (:mod:`nodule_bundle.data.followup_phantom`).
    """

    seriesuid: str
    volume_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    nodules: tuple
    patient_id: str | None = None
    label_map: np.ndarray | None = None
    study_date: str | None = None  # YYYYMMDD, where the scan is one of a patient's series (follow-ups)

    @property
    def affine_lps(self) -> np.ndarray:
        """Voxel index -> LPS world mm (direction cosines are the identity for the phantom)."""
        aff = np.diag([*self.spacing_mm, 1.0])
        aff[:3, 3] = self.origin_mm
        return aff

    def image(self) -> MetaTensor:
        """The scan as the bundle's reader hands it over: ``[1, X, Y, Z]`` float32 HU, RAS affine."""
        return MetaTensor(torch.from_numpy(self.volume_hu[None].astype(np.float32)), affine=torch.as_tensor(LPS_TO_RAS @ self.affine_lps))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class Canvas:
    """Voxel grid in world mm with local rendering of soft-edged shapes."""

    def __init__(self, shape: tuple[int, int, int], spacing: np.ndarray, origin: np.ndarray):
        self.shape, self.spacing, self.origin = shape, spacing, origin
        self.hu = np.full(shape, HU_AIR, dtype=np.float32)

    def axes(self, lo_mm: np.ndarray | None = None, hi_mm: np.ndarray | None = None):
        """Voxel slices and world coordinates (broadcastable x, y, z) of the box [lo_mm, hi_mm]."""
        if lo_mm is None:
            lo_idx, hi_idx = np.zeros(3, int), np.array(self.shape)
        else:
            lo_idx = np.clip(np.floor((lo_mm - self.origin) / self.spacing).astype(int), 0, self.shape)
            hi_idx = np.clip(np.ceil((hi_mm - self.origin) / self.spacing).astype(int) + 1, 0, self.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo_idx, hi_idx))
        coords = [self.origin[d] + self.spacing[d] * np.arange(lo_idx[d], hi_idx[d], dtype=np.float32) for d in range(3)]
        return sl, (coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :])

    def blend(self, sl, occupancy: np.ndarray, value_hu, where: np.ndarray | None = None) -> None:
        if occupancy.size == 0:
            return
        occ = occupancy if where is None else occupancy * where
        region = self.hu[sl]
        region += occ * (value_hu - region)

    def tube(self, p0: np.ndarray, p1: np.ndarray, radius_mm: float, value_hu: float, where=None) -> None:
        """A capsule (line segment of given radius) with a soft edge."""
        pad = radius_mm + 1.5
        sl, (x, y, z) = self.axes(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad)
        seg = p1 - p0
        length2 = max(float(seg @ seg), 1e-6)
        t = np.clip(((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (z - p0[2]) * seg[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((x - p0[0] - t * seg[0]) ** 2 + (y - p0[1] - t * seg[1]) ** 2 + (z - p0[2] - t * seg[2]) ** 2)
        self.blend(sl, _sigmoid((radius_mm - dist) / 0.3), value_hu, None if where is None else where[sl])


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _draw_nodule_traits(rng: np.random.Generator, diameter_mm: float) -> tuple[int, str, str, bool]:
    """Malignancy from size (logistic), then margin, texture and calcification given the label."""
    malignant = int(rng.random() < _sigmoid(np.array((diameter_mm - 12.0) / 3.0)))
    if malignant:
        margin = rng.choice(["spiculated", "lobulated", "smooth"], p=[0.75, 0.22, 0.03])
        texture = rng.choice(["solid", "part-solid", "ground-glass"], p=[0.55, 0.3, 0.15])
        calcified = False
    else:
        margin = rng.choice(["smooth", "lobulated", "spiculated"], p=[0.93, 0.05, 0.02])
        texture = rng.choice(["solid", "part-solid", "ground-glass"], p=[0.75, 0.08, 0.17])
        calcified = bool(texture == "solid" and rng.random() < 0.4)
    return malignant, str(margin), str(texture), calcified


def render_nodule(canvas: Canvas, rng: np.random.Generator, center: np.ndarray, pn: PhantomNodule) -> tuple[tuple[float, float], tuple, np.ndarray]:
    """Draw one nodule: smooth / lobulated / spiculated body, texture, optional calcification; its
    shape is drawn from ``rng`` and scales with ``pn.nodule.diameter_mm``, the size drawn for it.

    Occupancy is averaged over three sub-positions per slice (slice-thickness partial volume).
    Returns the body's reference size (:func:`_reference_size`: mean diameter, volume; and the solid
    component's diameter: the dense core's of a part-solid nodule) and its reference mask: the canvas box it was drawn in and, on it, the voxels the body (spicules excluded) fills at least half.
    """
    radius = pn.nodule.diameter_mm / 2.0
    spikes = _random_unit(rng, int(rng.integers(14, 24))) if pn.margin == "spiculated" else np.zeros((0, 3))
    spike_len = radius * rng.uniform(0.5, 1.0, len(spikes)) + rng.uniform(6.0, 11.0, len(spikes))  # beyond the surface
    spike_r = rng.uniform(1.0, 1.6, len(spikes))  # base radius at the surface (strands 2-3.2 mm thick), tapering to the tip
    # a lobulated nodule is a cluster of overlapping lobes around a smaller core, each >= ~2 mm across
    n_lobes = int(rng.integers(3, 6)) if pn.margin == "lobulated" else 0
    lobe_dirs = _random_unit(rng, n_lobes)
    lobe_r = np.maximum(radius * rng.uniform(0.45, 0.65, n_lobes), 1.2)
    lobe_offset = np.maximum(radius * rng.uniform(0.55, 0.75, n_lobes), 1.5)
    core_r = radius * 0.7 if n_lobes else radius
    stretch = rng.uniform(0.9, 1.1, 3)
    stretch /= np.cbrt(stretch.prod())
    extent = max(radius, float((lobe_r + lobe_offset).max()) if n_lobes else 0.0) + (spike_len.max() if len(spikes) else 0.0) + 2.0
    sl, (x, y, z) = canvas.axes(center - extent, center + extent)
    occ = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    core, strands = np.zeros_like(occ), np.zeros_like(occ)
    core_frac = rng.uniform(0.35, 0.6)
    for dz in (-canvas.spacing[2] / 3, 0.0, canvas.spacing[2] / 3):
        vx, vy, vz = (x - center[0]) / stretch[0], (y - center[1]) / stretch[1], (z + dz - center[2]) / stretch[2]
        dist = np.sqrt(vx**2 + vy**2 + vz**2) + 1e-6
        body = _sigmoid((core_r - dist) / 0.25)
        for w, r_lobe, offset in zip(lobe_dirs, lobe_r, lobe_offset):
            lobe_dist = np.sqrt((vx - offset * w[0]) ** 2 + (vy - offset * w[1]) ** 2 + (vz - offset * w[2]) ** 2)
            body = np.maximum(body, _sigmoid((r_lobe - lobe_dist) / 0.25))
        occ += body / 3.0
        spikes_here = np.zeros_like(occ)
        for w, length, r0 in zip(spikes, spike_len, spike_r):
            t = vx * w[0] + vy * w[1] + vz * w[2]
            perp = np.sqrt(np.maximum(dist**2 - t**2, 0.0))
            allowed = r0 * np.clip(1.0 - (t - radius) / length, 0.0, 1.0)
            spikes_here = np.maximum(spikes_here, _sigmoid((allowed - perp) / 0.25) * (t > 0) * (t < radius + length))
        strands += spikes_here / 3.0
        core += _sigmoid((radius * core_frac - dist) / 0.25) / 3.0
    texture = pn.nodule.texture
    base_hu = {"solid": rng.normal(30, 15), "part-solid": rng.normal(-520, 50), "ground-glass": rng.normal(-580, 50)}
    canvas.blend(sl, occ, base_hu[texture] + rng.normal(0, 25 if texture == "solid" else 40, occ.shape))
    if texture == "part-solid":
        canvas.blend(sl, core * occ, rng.normal(30, 15))
    canvas.blend(sl, strands * (1.0 - occ), rng.normal(20, 15))  # spicules are fibrotic strands: solid density
    if pn.calcified:
        canvas.blend(sl, core * occ, rng.uniform(350, 900))
    lobes = [(offset * w, r_lobe) for w, r_lobe, offset in zip(lobe_dirs, lobe_r, lobe_offset)]
    mean_mm, volume_mm3 = _reference_size(core_r, lobes, stretch)
    solid_mm = {"solid": mean_mm, "part-solid": 2.0 * radius * core_frac, "ground-glass": 0.0}[texture]
    return (mean_mm, volume_mm3, solid_mm), sl, occ >= 0.5


def _reference_size(core_r: float, lobes: list[tuple[np.ndarray, float]], stretch: np.ndarray) -> tuple[float, float]:
    """Lung-RADS mean axial diameter (mm) and volume (mm3) of the drawn body, spicules excluded (as
    radiologists measure).

    The body (core sphere and lobes, stretched) is rasterised without blur or noise on a fine grid
    and measured with the same calipers as the CT (:func:`~nodule_bundle.measuring.measure.axial_diameters`).
    """
    reach = max([core_r] + [float(np.linalg.norm(o)) + r for o, r in lobes]) * float(stretch.max()) + 0.5
    step = max(reach / 60.0, 0.05)
    axis = np.arange(-reach, reach + step / 2, step)
    vx, vy, vz = axis[:, None, None] / stretch[0], axis[None, :, None] / stretch[1], axis[None, None, :] / stretch[2]
    body = vx**2 + vy**2 + vz**2 <= core_r**2
    for offset, r_lobe in lobes:
        body |= (vx - offset[0]) ** 2 + (vy - offset[1]) ** 2 + (vz - offset[2]) ** 2 <= r_lobe**2
    long_axis, short_axis = axial_diameters(body, step)
    return (long_axis + short_axis) / 2.0, float(body.sum()) * step**3


def draw_chest(canvas: Canvas, rng: np.random.Generator, fov: np.ndarray, centre: np.ndarray) -> tuple[list, np.ndarray]:
    """Body, fat, bones, mediastinum, lungs, airways and vessels. Returns the lung ellipsoids
    (centre, semi-axes in mm) and the lungs' occupancy on the canvas (0..1)."""
    _, (x, y, z) = canvas.axes()
    ex, ey = (x - centre[0]) / (0.47 * fov[0]), (y - centre[1]) / (0.42 * fov[1])
    r_body = np.sqrt(ex**2 + ey**2) + 0.0 * z
    body = _sigmoid((1.0 - r_body) / 0.01)
    canvas.hu[:] = HU_AIR + body * (HU_SOFT - HU_AIR)
    canvas.hu[:] += _sigmoid((r_body - 0.93) / 0.01) * body * (HU_FAT - HU_SOFT)
    angle = np.arctan2(ey, ex)
    rib_phase = np.cos(2 * np.pi * (z - centre[2] + 6.0 * np.sin(angle)) / 24.0)
    ribs = ((r_body > 0.84) & (r_body < 0.9) & (rib_phase > 0.55)).astype(np.float32)
    canvas.hu[:] += ribs * (HU_BONE - canvas.hu)
    spine = _sigmoid((13.0 - np.sqrt((x - centre[0]) ** 2 + (y - centre[1] - 0.3 * fov[1]) ** 2)) / 0.5) + 0.0 * z
    canvas.hu[:] += spine * (rng.uniform(250, 400) - canvas.hu)

    lungs = []
    lung_mask = np.zeros(canvas.shape, np.float32)
    for side in (-1.0, 1.0):
        c = centre + np.array([side * 0.22 * fov[0], 0.02 * fov[1], 0.0])
        axes = np.array([0.18 * fov[0], 0.3 * fov[1], 0.44 * fov[2]]) * rng.uniform(0.93, 1.0, 3)
        lungs.append((c, axes))
        r = np.sqrt(((x - c[0]) / axes[0]) ** 2 + ((y - c[1]) / axes[1]) ** 2 + ((z - c[2]) / axes[2]) ** 2)
        lung_mask = np.maximum(lung_mask, _sigmoid((1.0 - r) / 0.015))
    parenchyma = HU_LUNG + rng.normal(0, 12, canvas.shape).astype(np.float32)
    canvas.hu[:] += lung_mask * (parenchyma - canvas.hu)

    # Airways: trachea down to the carina, main bronchi, a few lobar bronchi into each lung.
    carina = centre + np.array([0.0, -0.05 * fov[1], 0.12 * fov[2]])
    top = carina + np.array([0.0, -0.03 * fov[1], fov[2]])
    canvas.tube(top, carina, 9.0, HU_SOFT)
    canvas.tube(top, carina, 7.5, HU_AIR)
    for c, axes in lungs:
        hilum = c + np.array([-np.sign(c[0] - centre[0]) * 0.55 * axes[0], -0.1 * axes[1], 0.1 * axes[2]])
        canvas.tube(carina, hilum, 5.5, HU_SOFT)
        canvas.tube(carina, hilum, 4.3, HU_AIR)
        for _ in range(3):
            d = _random_unit(rng, 1)[0] * axes * 0.5
            canvas.tube(hilum, hilum + d, 2.6, HU_SOFT)
            canvas.tube(hilum, hilum + d, 1.8, HU_AIR)
        _draw_vessel_tree(canvas, rng, hilum, axes, lung_mask)
    return lungs, lung_mask


def _draw_vessel_tree(canvas, rng, hilum: np.ndarray, lung_axes: np.ndarray, lung_mask: np.ndarray) -> None:
    """Branching, gently curving vessels from the hilum, thinning as they go; drawn inside the lung."""
    stack = [(hilum, _random_unit(rng, 1)[0], rng.uniform(2.0, 3.2), 0) for _ in range(int(rng.integers(8, 12)))]
    while stack:
        start, direction, radius, depth = stack.pop()
        point = start
        for _ in range(int(rng.integers(3, 6))):
            direction = direction + 0.35 * rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            nxt = point + direction * rng.uniform(6.0, 12.0) * lung_axes / lung_axes.mean()
            canvas.tube(point, nxt, radius, rng.normal(HU_SOFT, 10), where=lung_mask)
            point, radius = nxt, radius * 0.9
        if depth < 2 and radius > 0.6:
            for _ in range(2):
                stack.append((point, direction + 0.8 * rng.normal(size=3), radius * 0.75, depth + 1))


def nodule_reach(diameter_mm: float, margin: str) -> float:
    """How far (mm) from its centre a nodule drawn at ``diameter_mm`` with ``margin`` can reach: its
    lobes, or its spicules, included."""
    reach = diameter_mm / 2 * 1.4 + 2.7 if margin == "lobulated" else diameter_mm / 2
    return reach + (diameter_mm / 2 + 11.0 if margin == "spiculated" else 0.0)


def place_nodules(rng, cfg: PhantomConfig, lungs, seriesuid: str) -> list[tuple[np.ndarray, PhantomNodule]]:
    """Non-overlapping nodules inside the lungs, log-uniform diameters within the configured range."""
    placed: list[tuple[np.ndarray, PhantomNodule]] = []
    lo, hi = cfg.diameter_range_mm
    for index in range(int(rng.integers(cfg.nodules_per_scan[0], cfg.nodules_per_scan[1] + 1))):
        c_lung, axes = lungs[int(rng.integers(0, 2))]
        max_d = min(hi, 2.0 * (0.7 * axes.min() - 3.0))
        if max_d <= lo:
            break
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(max_d))))
        malignancy, margin, texture, calcified = _draw_nodule_traits(rng, diameter)
        reach = nodule_reach(diameter, margin)
        for _ in range(200):
            u = _random_unit(rng, 1)[0] * rng.random() ** (1 / 3)
            center = c_lung + u * (axes - diameter / 2 - 2.0)
            if all(np.linalg.norm(center - c) > reach + r + 2.0 for c, r in ((p[0], p[2]) for p in placed)):
                nodule = Nodule(
                    nodule_id=f"{seriesuid[-6:]}-{index:02d}",
                    seriesuid=seriesuid,
                    center_world_mm=tuple(round(float(v), 3) for v in center),
                    diameter_mm=round(diameter, 3),
                    malignancy=malignancy,
                    texture=texture,
                )
                placed.append((center, PhantomNodule(nodule, margin, calcified), reach))
                break
    return [(c, pn) for c, pn, _ in placed]


def scanner(hu: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, noise_hu: float, psf_mm: float = 0.6,
            slice_sigma_voxels: float = 0.35) -> np.ndarray:
    """Point-spread blur (Gaussian, ``psf_mm`` sigma in-plane, ``slice_sigma_voxels`` in z: the slice
    profile) and correlated noise of ``noise_hu`` standard deviation; int16 HU."""
    psf_sigma = [psf_mm / spacing[0], psf_mm / spacing[1], slice_sigma_voxels]
    blurred = gaussian_blur(torch.from_numpy(hu)[None], psf_sigma)[0]
    noise = gaussian_blur(torch.from_numpy(rng.normal(0, 1, hu.shape).astype(np.float32))[None], 0.7)[0]
    noise *= noise_hu / float(noise.std())
    out = (blurred + noise).numpy()
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)


@dataclass(frozen=True)
class PhantomPatient:
    """What another scan of the same patient re-uses (:mod:`nodule_bundle.data.followup_phantom`): the
    anatomy before the nodules (HU, float32, on the scan's grid of ``spacing_mm`` from ``origin_mm``),
    the lungs (centre, semi-axes in mm) and each nodule as drawn: its centre (world mm), its record
    with the size drawn for it (not the reference diameter) and the state of the generator its shape
    was drawn from."""

    anatomy_hu: np.ndarray
    spacing_mm: np.ndarray
    origin_mm: np.ndarray
    lungs: list
    drawn: list[tuple[np.ndarray, PhantomNodule, dict]]
    sizes: list[tuple[float, float, float]]  # each nodule's reference size (:func:`render_nodule`), in ``drawn``'s order


def phantom_series_uid(seed: int, index: int) -> str:
    return generate_uid(entropy_srcs=["nodule-bundle-phantom", str(seed), str(index)])


def make_scan(seed: int, index: int, cfg: PhantomConfig = PhantomConfig()) -> PhantomScan:
    """Deterministic phantom scan ``index`` of the dataset drawn with ``seed``."""
    return draw_patient(seed, index, cfg)[0]


def draw_patient(seed: int, index: int, cfg: PhantomConfig = PhantomConfig()) -> tuple[PhantomScan, PhantomPatient]:
    """:func:`make_scan`'s scan and what a follow-up scan of the same patient needs of it."""
    rng = np.random.default_rng([seed, index])
    fov = np.array(cfg.fov_mm, dtype=np.float64)
    inplane = rng.uniform(*cfg.inplane_spacing_mm)
    spacing = np.array([inplane, inplane, float(rng.choice(cfg.slice_thicknesses_mm))])
    shape = tuple(int(v) for v in np.round(fov / spacing))
    origin = np.array([-fov[0] / 2, -fov[1] / 2, -fov[2] - 100.0]) + rng.uniform(-15, 15, 3)
    centre = origin + spacing * (np.array(shape) - 1) / 2
    seriesuid = phantom_series_uid(seed, index)
    canvas = Canvas(shape, spacing, origin)
    lungs, _ = draw_chest(canvas, rng, fov, centre)
    anatomy = canvas.hu.copy()
    placed = place_nodules(rng, cfg, lungs, seriesuid)
    nodules, label_map, drawn, sizes = [], np.zeros(shape, np.uint8), [], []
    for value, (center, pn) in enumerate(placed, start=1):
        drawn.append((center, pn, rng.bit_generator.state))
        size, box, mask = render_nodule(canvas, rng, center, pn)
        label_map[box][mask] = value
        nodules.append(replace(pn, nodule=replace(pn.nodule, diameter_mm=round(float(size[0]), 3))))
        sizes.append(size)
    volume = scanner(canvas.hu, spacing, rng, float(rng.uniform(*cfg.noise_hu)))
    scan = PhantomScan(
        seriesuid=seriesuid,
        volume_hu=volume,
        spacing_mm=tuple(float(s) for s in spacing),
        origin_mm=tuple(float(o) for o in origin),
        nodules=tuple(nodules),
        label_map=label_map,
    )
    return scan, PhantomPatient(anatomy, spacing, origin, lungs, drawn, sizes)
