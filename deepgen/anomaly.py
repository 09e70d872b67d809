"""Anomaly scores -> a calibrated threshold -> test metrics.

The threshold is calibrated on validation scores of *normal* rows only, so it does not depend on which
anomalies happen to be in the validation split: at a target false-positive rate, the threshold is the
(1 - fpr) quantile of normal scores; a row is anomalous when its score is above the threshold.
"""

from __future__ import annotations

import warnings

import numpy as np

from deepgen.config import FprThreshold, PercentileThreshold, ThresholdSpec
from deepgen.errors import DataError


def calibrate_threshold(normal_scores: np.ndarray, spec: ThresholdSpec) -> float:
    scores = np.asarray(normal_scores, dtype=np.float64)
    if len(scores) == 0:
        raise DataError("anomaly: the validation split has no normal rows to calibrate the threshold on")
    if isinstance(spec, FprThreshold):
        q = 100.0 * (1.0 - spec.target_fpr)
    elif isinstance(spec, PercentileThreshold):
        q = spec.percentile
    else:  # pragma: no cover - the spec union is closed
        raise ValueError(f"unknown threshold method {spec.method}")
    # "higher": the threshold is an observed score, so at most `fpr` of normal rows lie above it.
    return float(np.percentile(scores, q, method="higher"))


def threshold_params(spec: ThresholdSpec) -> dict[str, float | str]:
    return spec.model_dump()


def evaluate_scores(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC and PR-AUC of the scores, and precision/recall/F1/FPR of `score > threshold`."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, np.float64)
    truth = np.asarray(is_anomaly, bool)
    flagged = scores > threshold
    tp = int((flagged & truth).sum())
    fp = int((flagged & ~truth).sum())
    fn = int((~flagged & truth).sum())
    metrics = {
        "anomaly_rate": float(truth.mean()) if len(truth) else 0.0,
        "flagged_rate": float(flagged.mean()) if len(flagged) else 0.0,
        "fpr": fp / max(int((~truth).sum()), 1),
        "mean_score": float(scores.mean()) if len(scores) else float("nan"),
    }
    if truth.any() and (~truth).any():
        precision = tp / max(tp + fp, 1)
        recall = tp / max(tp + fn, 1)
        metrics |= {
            "roc_auc": float(roc_auc_score(truth, scores)),
            "pr_auc": float(average_precision_score(truth, scores)),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        }
    else:
        warnings.warn("anomaly: the test split holds only one class; ROC-AUC, PR-AUC and F1 are undefined",
                      stacklevel=2)
    return metrics
