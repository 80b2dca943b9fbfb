"""Metrics over known labels only: unknown labels (-1 / NaN) are left out, not counted as a class."""

import math
from types import SimpleNamespace

import torch
from ignite.metrics import Accuracy
from monai.handlers import ROCAUC, MeanAbsoluteError

from nodule_bundle.metrics import KnownLabels, validation_score


def _run(metric, batches):
    metric.reset()
    for y_pred, y in batches:
        metric.iteration_completed(SimpleNamespace(state=SimpleNamespace(output=(y_pred, y))))
    return metric.compute()


def test_unknown_labels_are_dropped_before_the_metric():
    probs = [torch.tensor([0.9]), torch.tensor([0.2]), torch.tensor([0.7]), torch.tensor([0.4])]
    labels = [torch.tensor(1), torch.tensor(0), torch.tensor(-1), torch.tensor(-1)]
    assert _run(KnownLabels(ROCAUC()), [(probs, labels)]) == 1.0  # the two unknowns would make it 0.75 or fail
    two_class = [torch.tensor([0.1, 0.9]), torch.tensor([0.8, 0.2]), torch.tensor([0.3, 0.7])]
    assert _run(KnownLabels(Accuracy()), [(two_class, [torch.tensor(1), torch.tensor(1), torch.tensor(-1)])]) == 0.5


def test_nan_diameters_are_dropped_and_no_labels_gives_nan():
    pred, true = [torch.tensor([5.0]), torch.tensor([9.0])], [torch.tensor([6.0]), torch.tensor([math.nan])]
    assert _run(KnownLabels(MeanAbsoluteError(save_details=False)), [(pred, true)]) == 1.0
    unknown = [torch.tensor(-1), torch.tensor(-1)]
    assert math.isnan(_run(KnownLabels(ROCAUC()), [([torch.tensor([0.3]), torch.tensor([0.6])], unknown)]))


def test_validation_score_counts_only_computable_terms():
    assert validation_score(0.9, 0.8, 1.0) == 0.9 + 0.8 - 0.1
    assert validation_score(math.nan, 0.8, 1.0) == 0.8 - 0.1  # a size-only dataset (LUNA16)
