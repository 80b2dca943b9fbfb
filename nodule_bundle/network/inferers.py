"""Test-time augmentation for patch classifiers: average the outputs over flips of the patch axes."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from monai.inferers import Inferer


class FlipAveragingInferer(Inferer):
    """Run the network on every combination of flips of ``spatial_axes`` and average the outputs.

    With three axes that is 8 passes. Valid because training augments with the same flips; the output
    is the mean over passes (logits and the regressed diameter alike), same shape as one pass. With
    ``keep_passes`` it is every pass, ``[B, passes, C]``, so that the post-processing can report how
    much they disagree (:class:`~nodule_bundle.network.targets.NoduleHeadsd`).
    """

    def __init__(self, spatial_axes: Sequence[int] = (0, 1, 2), keep_passes: bool = False):
        super().__init__()
        self.keep_passes = keep_passes
        dims = [a + 2 for a in spatial_axes]  # skip batch and channel
        self.flips = [combo for r in range(len(dims) + 1) for combo in combinations(dims, r)]

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        outputs = [network(inputs.flip(dims) if dims else inputs, *args, **kwargs) for dims in self.flips]
        return torch.stack(outputs, dim=1) if self.keep_passes else torch.stack(outputs).mean(0)
