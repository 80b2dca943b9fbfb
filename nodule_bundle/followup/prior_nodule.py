"""Where to look for a current nodule on the prior scan when the prior has no report: the registration
carries the current centre into the prior scan and the bundle's detector searches a box around that
point; the candidate nearest it within the matching gate is the place, else the carried point itself
(the detector misses some nodules that the measurement still finds: a 5 mm nodule against a vessel).
Whether a nodule is there is then the measurement's call, and where no candidate was found the
network's too (:meth:`~nodule_bundle.apps.interactive.NoduleService.follow_up`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialCrop
from monai.utils import SpaceKeys

from nodule_bundle.core.geometry import voxel_size, world_to_voxel
from nodule_bundle.detection.candidates import Candidate
from nodule_bundle.followup.matching import GATE_MM

#: Half the side of the box searched around the carried point: the gate plus room for the
#: detector's largest scale (the LoG of a 15 mm radius reaches about 26 mm; with 20 mm of room, a
#: 27 mm nodule the whole-scan detector finds was missed).
SEARCH_HALF_SIDE_MM = GATE_MM + 30.0


def prior_nodule_centre(
    prior: MetaTensor, carried_mm: np.ndarray, candidates: Callable[[MetaTensor, MetaTensor], list[Candidate]], gate_mm: float = GATE_MM
) -> tuple[np.ndarray, bool] | None:
    """The centre (LPS mm) of the candidate nearest ``carried_mm`` (a current nodule's centre carried into
    ``prior``, a ``[1, X, Y, Z]`` HU MetaTensor) among the ``candidates`` (the bundle's detector, given
    an image and its search mask) in a box around it, within ``gate_mm``, and ``True``; ``carried_mm``
    and ``False`` where there is none; ``None`` where the point lies outside the prior scan."""
    space = prior.meta.get("space", SpaceKeys.RAS)
    voxel = world_to_voxel(np.asarray(carried_mm, dtype=np.float64), prior.affine, space)
    shape = np.array(prior.shape[1:])
    if np.any(voxel < -0.5) or np.any(voxel > shape - 0.5):
        return None
    half = np.ceil(SEARCH_HALF_SIDE_MM / voxel_size(prior.affine)).astype(int)
    centre = np.rint(voxel).astype(int)
    box = SpatialCrop(roi_start=np.maximum(centre - half, 0), roi_end=np.minimum(centre + half + 1, shape))(prior)
    everywhere = MetaTensor(torch.ones((1, *box.shape[1:]), dtype=torch.uint8), affine=box.affine, meta={"space": space})
    found = [np.asarray(c.center_world_mm) for c in candidates(box, everywhere)]
    distances = [float(np.linalg.norm(c - carried_mm)) for c in found]
    if not found or min(distances) > gate_mm:
        return np.asarray(carried_mm, dtype=np.float64), False
    return found[int(np.argmin(distances))], True
