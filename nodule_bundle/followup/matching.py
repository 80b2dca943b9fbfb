"""Nodules of a prior and a current scan paired by distance after registration (Hungarian assignment)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

GATE_MM = 10.0  # farther apart than this after registration, two findings are not one nodule


@dataclass(frozen=True)
class Match:
    """One finding across time: the index of its prior and of its current finding (``None``: none,
    the nodule is new or gone) and, for a pair, the distance (mm) between the current centre and the
    prior centre carried into the current scan, and that displacement (current minus carried, LPS mm)."""

    prior: int | None
    current: int | None
    distance_mm: float = math.nan
    displacement_mm: tuple[float, float, float] | None = None


def match_nodules(prior_in_current_mm: np.ndarray, current_mm: np.ndarray, gate_mm: float = GATE_MM) -> list[Match]:
    """Pairs of prior and current nodules (``(N, 3)`` and ``(M, 3)`` LPS mm, the prior's already
    carried into the current scan) with the least total distance (scipy's Hungarian assignment), each
    pair at most ``gate_mm`` apart; every nodule left over is a match with one side ``None``. Pairs
    come in the order of the current nodules, then the prior nodules left over."""
    prior = np.asarray(prior_in_current_mm, dtype=np.float64).reshape(-1, 3)
    current = np.asarray(current_mm, dtype=np.float64).reshape(-1, 3)
    distance = cdist(prior, current)
    rows, cols = linear_sum_assignment(np.where(distance <= gate_mm, distance, 1e6)) if distance.size else ((), ())
    paired = {int(j): int(i) for i, j in zip(rows, cols) if distance[i, j] <= gate_mm}
    matches = []
    for j in range(len(current)):
        i = paired.get(j)
        if i is None:
            matches.append(Match(None, j))
        else:
            matches.append(Match(i, j, float(distance[i, j]), tuple(float(v) for v in current[j] - prior[i])))  # type: ignore[arg-type]
    return matches + [Match(i, None) for i in range(len(prior)) if i not in paired.values()]
