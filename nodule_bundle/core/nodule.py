"""The nodule record and the Lung-RADS size bands: plain data in physical units."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Lung-RADS v2022 solid-nodule size bands (mean diameter, mm): <6, 6-<8, 8-<15, >=15.
SIZE_BAND_EDGES_MM = (6.0, 8.0, 15.0)
SIZE_BAND_NAMES = ("<6 mm", "6-<8 mm", "8-<15 mm", ">=15 mm")
TEXTURES = ("solid", "part-solid", "ground-glass")
#: the LIDC-IDRI readers' semantic ratings a nodule may carry (their mean, on LIDC's scales: subtlety
#: 1-5, internal structure 1-4, calcification 1-6 with 6 none, sphericity, margin, lobulation and
#: spiculation 1-5); datalist keys, CSV columns and the network's semantic heads, in this order
RATING_COLUMNS = ("subtlety", "internal_structure", "calcification", "sphericity", "margin", "lobulation", "spiculation")


def size_band(diameter_mm: float) -> int:
    """Index of the Lung-RADS size band (0..3) that a mean diameter in mm falls in."""
    if not math.isfinite(diameter_mm) or diameter_mm <= 0:
        raise ValueError(f"diameter must be a positive number of mm, got {diameter_mm}")
    return sum(diameter_mm >= edge for edge in SIZE_BAND_EDGES_MM)


@dataclass(frozen=True)
class Nodule:
    """One pulmonary nodule; centre in world mm of the scanner's LPS frame (as LUNA16 publishes it).

    ``malignancy`` is 1 (malignant), 0 (benign) or ``None`` when unknown (e.g. LUNA16).
    """

    nodule_id: str
    seriesuid: str
    center_world_mm: tuple[float, float, float]
    diameter_mm: float
    malignancy: int | None = None
    texture: str | None = None

    @property
    def size_band(self) -> int:
        return size_band(self.diameter_mm)

    @property
    def volume_mm3(self) -> float:
        """Volume of the equivalent sphere."""
        return math.pi / 6.0 * self.diameter_mm**3


def texture_from_measurement(mean_diameter_mm: float, solid_mean_diameter_mm: float) -> str:
    """The texture a nodule's mask implies: ``ground-glass`` with no solid component of at least
    1 mm, ``solid`` when the solid component spans at least 75 % of the nodule, else ``part-solid``
    (an estimate: ``nodule-bundle bench measure`` reports how often it agrees with the phantom)."""
    if solid_mean_diameter_mm < 1.0:
        return "ground-glass"
    return "solid" if solid_mean_diameter_mm >= 0.75 * mean_diameter_mm else "part-solid"


def lung_rads_category(texture: str, mean_diameter_mm: float, solid_mean_diameter_mm: float | None = None) -> str:
    """The Lung-RADS v2022 category that a baseline screening nodule's size alone implies.

    Solid: <6 mm 2, 6-<8 mm 3, 8-<15 mm 4A, >=15 mm 4B. Part-solid: total <6 mm 2; else by the solid
    component: <6 mm 3, 6-<8 mm 4A, >=8 mm 4B. Ground glass: <30 mm 2, >=30 mm 3. Follow-up scans,
    growth and the 4X/S modifiers are the radiologist's call, not this function's.
    """
    if texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    if not math.isfinite(mean_diameter_mm) or mean_diameter_mm <= 0:
        raise ValueError(f"diameter must be a positive number of mm, got {mean_diameter_mm}")
    if texture == "ground-glass":
        return "2" if mean_diameter_mm < 30.0 else "3"
    if texture == "part-solid":
        solid = solid_mean_diameter_mm or 0.0
        if mean_diameter_mm < 6.0:
            return "2"
        return "3" if solid < 6.0 else "4A" if solid < 8.0 else "4B"
    return ("2", "3", "4A", "4B")[size_band(mean_diameter_mm)]
