"""The nodule record and the Lung-RADS size bands: plain data in physical units."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Lung-RADS v2022 solid-nodule size bands (mean diameter, mm): <6, 6-<8, 8-<15, >=15.
SIZE_BAND_EDGES_MM = (6.0, 8.0, 15.0)
SIZE_BAND_NAMES = ("<6 mm", "6-<8 mm", "8-<15 mm", ">=15 mm")
TEXTURES = ("solid", "part-solid", "ground-glass")


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
