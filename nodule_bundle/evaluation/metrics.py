"""Validation metrics over the items whose label is known: datasets label different heads
(LUNA16 has sizes but no malignancy), and an unknown label is left out, never counted as a class;
and the paired comparison of two models' AUC on the same items."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.metrics import compute_roc_auc


def _known(label: torch.Tensor | float) -> bool:
    label = torch.as_tensor(label)
    return bool(torch.all(torch.isfinite(label.float())) and torch.all(label >= 0))


class KnownLabels(Metric):
    """Run ``metric`` (any ignite or MONAI metric handler) only on items with a known label.

    ``output_transform`` gives ``(y_pred, y)`` as per-item lists (``monai.handlers.from_engine``); items
    whose ``y`` is negative (unknown class) or NaN (unknown diameter) are dropped. With no known label
    in the whole epoch the result is NaN (not computable), not an error.
    """

    def __init__(self, metric: Metric, output_transform: Callable = lambda x: x):
        self.metric, self.n_known = metric, 0
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self.metric.reset()
        self.n_known = 0

    def update(self, output: tuple[Sequence, Sequence]) -> None:
        y_pred, y = output
        keep = [i for i, label in enumerate(y) if _known(label)]
        if keep:
            self.n_known += len(keep)
            known = ([y_pred[i] for i in keep], [y[i] for i in keep])
            self.metric.iteration_completed(SimpleNamespace(state=SimpleNamespace(output=known)))  # type: ignore[arg-type]

    def iteration_completed(self, engine: Engine) -> None:
        self.update(self._output_transform(engine.state.output))

    def compute(self) -> float:
        return math.nan if self.n_known == 0 else self.metric.compute()


def validation_score(auc: float, band_accuracy: float, diameter_mae_mm: float) -> float:
    """Model-selection score ``AUC + band accuracy - MAE/10``; terms without labels (NaN) count 0."""
    terms = (auc, band_accuracy, -diameter_mae_mm / 10.0)
    return float(sum(t for t in terms if math.isfinite(t)))


def paired_auc_difference(labels: Sequence[int], scores: Sequence[float], reference: Sequence[float], resamples: int = 2000,
                          seed: int = 0) -> dict:  # fmt: skip
    """``AUC(scores) - AUC(reference)`` on the same items, with a 95 % percentile interval from a paired
    bootstrap stratified by class (positives and negatives each resampled with replacement, the same
    draw for both scores; MONAI's ``compute_roc_auc`` on each): ``{"difference", "ci95", "resamples"}``.
    Pairing removes the between-item variance the two scores share, so the interval is much tighter
    than the two AUCs' own intervals suggest."""
    y = torch.as_tensor(labels).long()
    a, b = torch.as_tensor(scores).float(), torch.as_tensor(reference).float()
    if not len(y) == len(a) == len(b):
        raise ValueError(f"labels, scores and reference differ in length: {len(y)}, {len(a)}, {len(b)}")
    if set(y.tolist()) != {0, 1}:
        raise ValueError(f"a paired AUC comparison needs labels of both classes 0 and 1, got {sorted(set(y.tolist()))}")
    generator = torch.Generator().manual_seed(seed)
    classes = [torch.nonzero(y == c).flatten() for c in (0, 1)]
    differences = []
    for _ in range(resamples):
        draw = torch.cat([members[torch.randint(len(members), (len(members),), generator=generator)] for members in classes])
        differences.append(float(compute_roc_auc(a[draw], y[draw])) - float(compute_roc_auc(b[draw], y[draw])))
    low, high = torch.tensor(differences).quantile(torch.tensor([0.025, 0.975])).tolist()
    return {"difference": float(compute_roc_auc(a, y)) - float(compute_roc_auc(b, y)), "ci95": [low, high], "resamples": resamples}
