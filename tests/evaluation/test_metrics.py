"""Metrics over known labels only: unknown labels (-1 / NaN) are left out, not counted as a class."""

import math
from types import SimpleNamespace

import torch
from ignite.metrics import Accuracy
from monai.handlers import ROCAUC, MeanAbsoluteError

import pytest
from monai.metrics import compute_roc_auc

from nodule_bundle.evaluation.metrics import KnownLabels, paired_auc_difference, validation_score


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


def test_paired_auc_difference_is_the_auc_gap_with_a_bootstrap_interval_around_it():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(300, generator=generator) < 0.4).long()
    shared = torch.randn(300, generator=generator)  # what both models see: the pairing removes it
    weak, strong = labels * 0.5 + shared, labels * 1.5 + shared
    result = paired_auc_difference(labels, strong, weak, resamples=500)
    gap = float(compute_roc_auc(strong, labels)) - float(compute_roc_auc(weak, labels))
    assert result["difference"] == pytest.approx(gap) and gap > 0.1 and result["resamples"] == 500
    low, high = result["ci95"]
    assert 0.0 < low < gap < high  # the stronger score is better beyond doubt
    swapped = paired_auc_difference(labels, weak, strong, resamples=500)
    assert swapped["difference"] == pytest.approx(-gap) and swapped["ci95"] == pytest.approx([-high, -low], abs=1e-6)
    assert paired_auc_difference(labels, weak, weak, resamples=50)["ci95"] == [0.0, 0.0]


def test_paired_auc_difference_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="both classes"):
        paired_auc_difference([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="differ in length: 3, 2, 3"):
        paired_auc_difference([0, 1, 1], [0.1, 0.2], [0.3, 0.2, 0.1])
