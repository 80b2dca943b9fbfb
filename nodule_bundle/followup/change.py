"""A nodule's change between two scans: growth, volume doubling time and the Lung-RADS v2022 category
with the prior.

Growth is Lung-RADS': the mean diameter up by more than :data:`GROWTH_MM`. Two scans' change in mean
diameter is read from their volumes where both are measured (:func:`diameter_change_mm`): a volume
counts every voxel of the nodule, an axial mean diameter one slice's outline, so the volumes' ratio
carries less of each scan's measurement error. The volume doubling time
is ``VDT = days * ln 2 / ln(V2 / V1)`` (negative: the nodule shrinks; infinite: no change), with a 95 %
interval from the volume's measurement error (:data:`VOLUME_LOG_SD` per measurement, independent).
The category follows Lung-RADS v2022's rules for a nodule seen before (or new) in a screening series;
the "S" modifier and a 4X for other suspicious features are the radiologist's call.
"""

from __future__ import annotations

import math

from nodule_bundle.core.nodule import TEXTURES, lung_rads_category

GROWTH_MM = 1.5  # Lung-RADS v2022: an increase in mean diameter of more than 1.5 mm is growth
#: the measured volume's error, as a standard deviation of its logarithm: ``bench realism`` measures a
#: median absolute volume error of about 8 % on real nodule geometry, a normal SD of about 12 %
VOLUME_LOG_SD = 0.12
STATUSES = ("new", "growing", "stable", "shrinking", "resolved")
_STEP_DOWN = {"2": "2", "3": "2", "4A": "3", "4B": "4B"}  # v2022's stepped management of a nodule that stayed
_ORDER = ("1", "2", "3", "4A", "4B", "4X")


def diameter_change_mm(prior_mean_mm: float, current_mean_mm: float, prior_volume_mm3: float | None = None, current_volume_mm3: float | None = None) -> float:
    """The change in mean diameter between two scans: where both volumes are given, the one their
    ratio implies for a nodule that grows alike in every direction (the two mean diameters' sum kept,
    their ratio the cube root of the volumes'); else the diameters' difference."""
    if not (prior_volume_mm3 and current_volume_mm3 and prior_volume_mm3 > 0 and current_volume_mm3 > 0):
        return current_mean_mm - prior_mean_mm
    ratio = (current_volume_mm3 / prior_volume_mm3) ** (1.0 / 3.0)
    return (prior_mean_mm + current_mean_mm) * (ratio - 1.0) / (ratio + 1.0)


def status(prior_mean_mm: float | None, current_mean_mm: float | None, change_mm: float | None = None) -> str:
    """``new`` (no prior finding), ``resolved`` (no current one), else ``growing`` or ``shrinking``
    (mean diameter up or down by more than :data:`GROWTH_MM`; ``change_mm`` where given, else the
    diameters' difference) or ``stable``."""
    if prior_mean_mm is None and current_mean_mm is None:
        raise ValueError("a nodule needs a prior or a current size")
    if prior_mean_mm is None:
        return "new"
    if current_mean_mm is None:
        return "resolved"
    change = current_mean_mm - prior_mean_mm if change_mm is None else change_mm
    return "growing" if change > GROWTH_MM else "shrinking" if change < -GROWTH_MM else "stable"


def volume_doubling_time(prior_volume_mm3: float, current_volume_mm3: float, days: float) -> float:
    """VDT in days (negative: halving time; ``inf``: the same volume)."""
    if prior_volume_mm3 <= 0 or current_volume_mm3 <= 0 or days <= 0:
        raise ValueError(f"volumes and interval must be positive, got {prior_volume_mm3}, {current_volume_mm3} mm3 over {days} days")
    ratio = math.log(current_volume_mm3 / prior_volume_mm3)
    return math.inf if ratio == 0 else days * math.log(2.0) / ratio


def vdt_interval(prior_volume_mm3: float, current_volume_mm3: float, days: float, log_sd: float = VOLUME_LOG_SD) -> tuple[float, float]:
    """The 95 % interval of the VDT (days) given each volume's measurement error ``log_sd``. Where the
    change is within that error the interval holds infinity: ``(low, inf)`` for a nodule that may not
    have grown, ``(-inf, high)`` for one that may not have shrunk."""
    volume_doubling_time(prior_volume_mm3, current_volume_mm3, days)  # checks the arguments
    ratio = math.log(current_volume_mm3 / prior_volume_mm3)
    spread = 1.96 * math.sqrt(2.0) * log_sd
    lo, hi = ratio - spread, ratio + spread
    to_vdt = lambda r: days * math.log(2.0) / r if r != 0 else math.inf  # noqa: E731
    if lo > 0:
        return to_vdt(hi), to_vdt(lo)
    if hi < 0:
        return to_vdt(hi), to_vdt(lo)
    return (to_vdt(hi), math.inf) if ratio >= 0 else (-math.inf, to_vdt(lo))


def measurement_error_mm(prior_mean_mm: float, current_mean_mm: float, log_sd: float = VOLUME_LOG_SD) -> float:
    """One standard deviation of the change in mean diameter that two measured volumes' errors
    (``log_sd`` each, independent) carry: :func:`diameter_change_mm` of a volume ratio of
    ``exp(sqrt(2) * log_sd)`` (about 6 % of the mean diameter at 0.12)."""
    return diameter_change_mm(prior_mean_mm, current_mean_mm, 1.0, math.exp(math.sqrt(2.0) * log_sd))


def lung_rads_with_prior(texture: str, mean_mm: float | None, solid_mm: float | None, prior_mean_mm: float | None,
                         prior_solid_mm: float | None = None, prior_texture: str | None = None, change_mm: float | None = None,
                         least_enlargement_mm: float = 0.0) -> str | None:  # fmt: skip
    """The Lung-RADS v2022 category of one nodule on a follow-up screening scan, given its size now
    and on the prior (``None``: not seen there, a new nodule); ``None`` for a nodule gone (resolved).
    A solid nodule grows where its mean diameter's change (``change_mm``, else the diameters'
    difference) is more than :data:`GROWTH_MM`.

    Solid: new <4 mm 2, 4-<6 3, 6-<8 4A, >=8 4B; growing <8 mm 4A, >=8 4B; otherwise the prior's
    category stepped down (3 -> 2, 4A -> 3, 4B stays), unless it now reaches a higher category and
    enlarged (a change above ``least_enlargement_mm``: 0 for exact sizes, the two measurements' error
    for measured ones, :func:`measurement_error_mm`) or changed its texture: v2022's size thresholds
    apply to nodules "that enlarge"; a mean diameter over a threshold with no change beyond that error
    is the two scans' measurement error.
    Part-solid: new with a total <6 mm 3; at 6 mm and more, a new or growing solid component <4 mm
    4A, >=4 mm 4B.
    Ground glass: 2, or 3 when new at >= 30 mm; >= 30 mm and stable 2."""
    if mean_mm is None:
        return None
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    solid = solid_mm or 0.0
    now = lung_rads_category(texture, mean_mm, solid)
    if texture == "ground-glass":
        return "3" if prior_mean_mm is None and mean_mm >= 30.0 else "2"
    if texture == "part-solid":
        if prior_mean_mm is None and mean_mm < 6.0:
            return "3"
        solid_new = prior_mean_mm is None or prior_texture == "ground-glass"
        solid_growing = not solid_new and solid - (prior_solid_mm or 0.0) > GROWTH_MM
        if mean_mm >= 6.0 and (solid_new or solid_growing):
            return "4A" if solid < 4.0 else "4B"
    elif prior_mean_mm is None:
        return "2" if mean_mm < 4.0 else "3" if mean_mm < 6.0 else "4A" if mean_mm < 8.0 else "4B"
    change = mean_mm - prior_mean_mm if change_mm is None else change_mm  # a part-solid nodule here has a prior too
    if texture == "solid" and change > GROWTH_MM:
        return "4A" if mean_mm < 8.0 else "4B"
    before = lung_rads_category(prior_texture or texture, prior_mean_mm, prior_solid_mm)
    stepped = _STEP_DOWN.get(before, before)
    changed = change > least_enlargement_mm or (prior_texture or texture) != texture  # enlarged, or its texture changed
    return now if changed and _ORDER.index(now) > _ORDER.index(before) else stepped
