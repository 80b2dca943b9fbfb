"""Calibrated malignancy probabilities: temperature scaling (Guo et al. 2017) fitted on the validation
split, and the expected calibration error (MONAI's ``CalibrationErrorMetric``) that shows it worked.

A temperature ``T`` divides the malignancy logits before the softmax: it changes how confident the
probabilities are, never their order, so AUC and accuracy stay as they were. The bundle keeps ``T`` in
``models/calibration.json``; without that file probabilities are the network's own (``T = 1``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from monai.metrics import CalibrationErrorMetric, calibration_binning

from nodule_bundle.core.errors import NoduleBundleError

ECE_BINS = 10


class CalibrationFileError(NoduleBundleError):
    """A ``calibration.json`` that does not hold a usable temperature."""


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (``[N]`` 0/1) under
    ``softmax(logits / T)`` (``logits`` ``[N, 2]``); fitted in log space, so ``T`` stays positive."""
    logits, labels = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels).long()
    if len(labels) == 0 or len(set(labels.tolist())) < 2:
        raise ValueError(f"temperature scaling needs both classes among the labels, got {sorted(set(labels.tolist()))}")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    return float(log_t.exp())


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of P(malignant) against 0/1 labels: the count-weighted mean gap between confidence and
    observed frequency over ``bins`` equal-width bins (MONAI ``CalibrationErrorMetric``)."""
    p, y = torch.as_tensor(probabilities, dtype=torch.float32).flatten(), torch.as_tensor(labels, dtype=torch.float32).flatten()
    metric = CalibrationErrorMetric(num_bins=bins)
    return float(metric(p.reshape(1, 1, -1), y.reshape(1, 1, -1)).mean())


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per bin: mean predicted probability, observed frequency and count (MONAI ``calibration_binning``)."""
    p, y = torch.as_tensor(probabilities, dtype=torch.float32).flatten(), torch.as_tensor(labels, dtype=torch.float32).flatten()
    mean_p, mean_y, counts = (t[0, 0] for t in calibration_binning(p.reshape(1, 1, -1), y.reshape(1, 1, -1), num_bins=bins))
    return {"mean_probability": mean_p.tolist(), "observed_frequency": mean_y.tolist(), "count": counts.int().tolist()}


def load_temperature(path: str | Path) -> float:
    """The malignancy temperature in ``path`` (``calibration.json``); 1.0 (uncalibrated) if there is none."""
    path = Path(path)
    if not path.exists():
        return 1.0
    try:
        value = float(json.loads(path.read_text())["malignancy_temperature"])
    except (ValueError, KeyError, TypeError) as err:
        raise CalibrationFileError(f"{path}: no usable 'malignancy_temperature' ({type(err).__name__}: {err})") from None
    if not (math.isfinite(value) and value > 0):
        raise CalibrationFileError(f"{path}: malignancy_temperature must be a positive number, got {value}")
    return value
