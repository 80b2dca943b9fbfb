"""Two scans' findings compared: the prior's nodules carried into the current scan by the
registration, matched, and each pair's change (``followup.json``'s ``nodules``).

A finding is a nodule of ``report.json`` (``nodule_id``, ``center_world_mm`` and the ``measured_*``
sizes, ``texture``; ``diameter_mm``, the network's, stands in where no mask could be grown). Each
row of the comparison::

    {"status": new | growing | stable | shrinking | resolved,
     "current_nodule_id", "prior_nodule_id" (null where there is none),
     "distance_mm", "displacement_mm": [3] (current centre minus the prior's carried into the current scan, LPS),
     "current": {"center_world_mm", "long_axis_mm", "short_axis_mm", "mean_diameter_mm", "volume_mm3",
                 "solid_mean_diameter_mm", "texture", "malignancy_probability"}, "prior": {...},
     "mean_diameter_change_mm" (from the volumes where both are measured: :func:`~nodule_bundle.followup.change.diameter_change_mm`),
     "volume_change_percent", "vdt_days", "vdt_95ci_days": [low, high]
     (null for infinite), "lung_rads_category" (v2022, with the prior; null for a resolved nodule)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nodule_bundle.followup.change import diameter_change_mm, lung_rads_with_prior, measurement_error_mm, status, vdt_interval, volume_doubling_time
from nodule_bundle.followup.matching import GATE_MM, match_nodules
from nodule_bundle.followup.registration import Registration

_SIZES = {
    "long_axis_mm": "measured_long_axis_mm", "short_axis_mm": "measured_short_axis_mm", "mean_diameter_mm": "measured_mean_diameter_mm",
    "volume_mm3": "measured_volume_mm3", "solid_mean_diameter_mm": "measured_solid_mean_diameter_mm",
}  # fmt: skip


def finding_sizes(finding: Mapping) -> dict:
    """A finding's centre, sizes, texture and probability; the mean diameter the network's where the
    mask gave none."""
    sizes = {name: finding.get(key) for name, key in _SIZES.items()}
    if sizes["mean_diameter_mm"] is None and finding.get("diameter_mm") is not None:
        sizes["mean_diameter_mm"] = finding["diameter_mm"]
    return {"center_world_mm": list(finding["center_world_mm"]), **sizes, "texture": finding.get("texture") or "solid",
            "malignancy_probability": finding.get("malignancy_probability")}  # fmt: skip


def _finite(value: float, ndigits: int) -> float | None:
    return round(value, ndigits) if math.isfinite(value) else None


def change_row(prior: Mapping | None, current: Mapping | None, days: float | None, measured: bool = True) -> dict:
    """The change between one nodule's prior and current sizes (:func:`finding_sizes`; either ``None``)
    over ``days`` (``None``: unknown, no VDT). Sizes ``measured`` (the default) carry an error: the
    change in mean diameter is read from the volumes, and an enlargement into a higher Lung-RADS size
    category must exceed the two measurements' error; exact sizes (a reference's, ``measured=False``):
    the diameters' difference, and any enlargement counts."""
    before = prior["mean_diameter_mm"] if prior else None
    now = current["mean_diameter_mm"] if current else None
    change, growth = None, {}
    if prior and current:
        v0, v1 = prior["volume_mm3"], current["volume_mm3"]
        change = diameter_change_mm(before, now, *((v0, v1) if measured else ()))
        growth["mean_diameter_change_mm"] = round(change, 1)
        if v0 and v1:
            growth["volume_change_percent"] = round(100.0 * (v1 / v0 - 1.0), 1)
            if days:
                growth["vdt_days"] = _finite(volume_doubling_time(v0, v1, days), 0)
                growth["vdt_95ci_days"] = [_finite(v, 0) for v in vdt_interval(v0, v1, days)]
    row = {"status": status(before, now, change), **growth}
    if current:
        row["lung_rads_category"] = lung_rads_with_prior(
            current["texture"], now, current["solid_mean_diameter_mm"], before,
            prior["solid_mean_diameter_mm"] if prior else None, prior["texture"] if prior else None, change,
            measurement_error_mm(before, now) if measured and prior else 0.0,
        )  # fmt: skip
    else:
        row["lung_rads_category"] = None
    return row


def compare_findings(registration: Registration, prior: Sequence[Mapping], current: Sequence[Mapping], days: float | None, gate_mm: float = GATE_MM) -> list[dict]:
    """Every nodule of either scan once: the pairs the registration and matching find, the current
    nodules no prior one matches (new) and the prior ones no current one matches (resolved)."""
    carried = registration.prior_to_current(np.array([f["center_world_mm"] for f in prior], dtype=np.float64).reshape(-1, 3))
    centres = np.array([f["center_world_mm"] for f in current], dtype=np.float64).reshape(-1, 3)
    rows = []
    for match in match_nodules(carried, centres, gate_mm):
        before = finding_sizes(prior[match.prior]) if match.prior is not None else None
        now = finding_sizes(current[match.current]) if match.current is not None else None
        rows.append({
            "current_nodule_id": current[match.current].get("nodule_id") if match.current is not None else None,
            "prior_nodule_id": prior[match.prior].get("nodule_id") if match.prior is not None else None,
            "distance_mm": _finite(match.distance_mm, 1),
            "displacement_mm": [round(v, 1) for v in match.displacement_mm] if match.displacement_mm else None,
            **change_row(before, now, days), "current": now, "prior": before,
        })  # fmt: skip
    return rows
