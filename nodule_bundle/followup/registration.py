"""A prior scan registered to the current one with SimpleITK's registration framework: rigid, then
affine, the metric taken on the current scan's lungs.

Both scans go to an isotropic grid (``spacing_mm``, trilinear) in RAS order with their lung masks
(:func:`~nodule_bundle.detection.candidates.lung_mask`). The rigid stage starts from the lungs'
centres of mass (the patient moved on the table) and the affine stage takes it on (breathing scales
the chest; where that stage lowers the lungs' overlap or scales by more than a breath can, the rigid
result stands); both use Mattes mutual information on the current lungs grown by ``margin_mm`` (their
border with the chest wall and diaphragm is what holds the registration), three resolutions, ITK's
regular-step gradient descent. The result maps points both ways and says how well the lungs
overlap afterwards and how well their vessels line up; a pair that cannot be one patient's (no
lungs, lungs that do not overlap, vessels that do not line up) is refused with a
:class:`FollowupError` naming both scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from monai.data import MetaTensor
from scipy import ndimage as ndi

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.geometry import LPS_TO_RAS
from nodule_bundle.detection.candidates import isotropic, lung_mask_array

MIN_LUNG_ML = 100.0  # less aerated lung than this (a chest holds 4-6 litres) is not a chest CT the lungs can be registered on
MIN_LUNG_DICE = 0.75  # the registered lungs overlap at least this much, or the pair is not one patient's
MAX_SCALE_CHANGE = 0.2  # a breath scales the chest by less than this along any axis: an affine stage beyond it went astray
#: the registered scans' HU inside both lungs correlate at least this much: one patient's vessels line up
#: (phantom pairs: 0.72-0.98 for the same patient, 0.08-0.23 for two patients, whose lungs overlap as well)
MIN_VESSEL_CORRELATION = 0.4


class FollowupError(NoduleBundleError):
    """A prior and current scan that cannot be compared; the message names both and the reason."""


@dataclass(frozen=True)
class Registration:
    """The prior registered to the current scan: ``transform`` maps current world points (LPS mm) to
    the prior's (as ITK's registration gives it); ``lung_dice`` is the overlap of the current lungs
    with the prior's carried onto them; ``scale`` the affine's scale along each axis (breathing)."""

    transform: sitk.Transform
    lung_dice: float
    scale: tuple[float, float, float]
    vessel_correlation: float

    def current_to_prior(self, points_lps_mm: np.ndarray) -> np.ndarray:
        return np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in np.asarray(points_lps_mm, float).reshape(-1, 3)])

    def prior_to_current(self, points_lps_mm: np.ndarray) -> np.ndarray:
        inverse = self.transform.GetInverse()
        return np.array([inverse.TransformPoint(tuple(float(v) for v in p)) for p in np.asarray(points_lps_mm, float).reshape(-1, 3)])


def as_sitk(array: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """A ``[X, Y, Z]`` array whose voxel -> RAS world affine is ``affine_ras`` as a SimpleITK image (LPS)."""
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))  # SimpleITK arrays are [z, y, x]
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return image


def _lungs(image: MetaTensor, spacing_mm: float, name: str) -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """The scan on the isotropic grid (HU, float32), its lung mask (uint8) and the mask as an array."""
    coarse = isotropic(image, spacing_mm)
    hu = coarse[0].numpy()
    mask = lung_mask_array(hu, spacing_mm)
    if mask.sum() * spacing_mm**3 / 1000.0 < MIN_LUNG_ML:
        raise FollowupError(f"{name}: no lungs found ({mask.sum() * spacing_mm**3 / 1000.0:.0f} ml of aerated lung): not a chest CT that can be followed up")
    affine = np.asarray(coarse.affine, dtype=np.float64)
    return as_sitk(np.clip(hu, -1000.0, 400.0), affine), as_sitk(mask.astype(np.uint8), affine), mask


def _registered(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, initial: sitk.Transform, seed: int, learning_rate: float) -> sitk.Transform:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.3, seed + 1)  # SimpleITK's seed 0 is the clock
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving).GetNthTransform(0)


def register(prior: MetaTensor, current: MetaTensor, prior_name: str = "prior", current_name: str = "current",
             spacing_mm: float = 2.0, margin_mm: float = 6.0, seed: int = 0) -> Registration:  # fmt: skip
    """The ``prior`` scan registered to the ``current`` one (``[1, X, Y, Z]`` HU MetaTensors as the
    bundle's reader gives them); see the module docstring. Raises :class:`FollowupError` for a pair
    that cannot be one patient's."""
    fixed, fixed_mask, current_lungs = _lungs(current, spacing_mm, current_name)
    moving, moving_mask, _ = _lungs(prior, spacing_mm, prior_name)
    grown = ndi.distance_transform_edt(~current_lungs) <= margin_mm / spacing_mm
    metric_mask = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(grown, (2, 1, 0))).astype(np.uint8))
    metric_mask.CopyInformation(fixed_mask)
    start = sitk.CenteredTransformInitializer(fixed_mask, moving_mask, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = sitk.Euler3DTransform(_registered(fixed, moving, metric_mask, start, seed, learning_rate=2.0))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine = sitk.AffineTransform(_registered(fixed, moving, metric_mask, affine, seed, learning_rate=0.5))

    def overlap(transform: sitk.Transform) -> tuple[float, np.ndarray]:
        carried = sitk.GetArrayFromImage(sitk.Resample(moving_mask, fixed_mask, transform, sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0) > 0
        return float(2 * (carried & current_lungs).sum() / max(carried.sum() + current_lungs.sum(), 1)), carried

    def scales(transform: sitk.Transform) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.svd(np.asarray(transform.GetMatrix()).reshape(3, 3), compute_uv=False))

    (dice, carried), (rigid_dice, rigid_carried) = overlap(affine), overlap(rigid)
    transform, scale = affine, scales(affine)
    if dice < rigid_dice or any(abs(s - 1.0) > MAX_SCALE_CHANGE for s in scale):  # the affine stage went astray: the rigid result stands
        transform, scale, dice, carried = rigid, scales(rigid), rigid_dice, rigid_carried
    pair = f"{prior_name} -> {current_name}"
    if dice < MIN_LUNG_DICE:
        raise FollowupError(f"{pair}: the registered lungs overlap by {dice:.2f} (Dice, at least {MIN_LUNG_DICE} expected): not one patient's scans, or the scans do not cover the same lungs")
    inside = ndi.distance_transform_edt(current_lungs & carried) > margin_mm / spacing_mm
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0)).transpose(2, 1, 0)
    correlation = float(np.corrcoef(warped[inside], sitk.GetArrayFromImage(fixed).transpose(2, 1, 0)[inside])[0, 1])
    if correlation < MIN_VESSEL_CORRELATION:
        raise FollowupError(f"{pair}: the registered lungs' vessels do not line up (correlation {correlation:.2f}, at least {MIN_VESSEL_CORRELATION} expected): not one patient's scans")
    return Registration(transform, dice, scale, correlation)  # type: ignore[arg-type]
