"""Anomaly scores -> a calibrated threshold -> test metrics.

A row is anomalous when its score is above the threshold. The threshold is calibrated on the validation
split, by one of four methods (`anomaly.threshold.method`):

- `fpr`, `percentile`: a quantile of the scores of *normal* rows only, so it does not depend on which
  anomalies happen to be in the validation split: at a target false-positive rate, the (1 - fpr) quantile.
- `pot`: peaks over threshold (Siffer et al. 2017): a generalised Pareto tail fitted to the largest normal
  scores, so a small risk (1e-3, 1e-4) can be set beyond the largest score observed. With too few scores
  above the initial quantile, or a fit that does not describe them (tied or bounded top scores), it falls
  back to `fpr` at the same risk, with a warning.
- `f1`: the threshold that maximises F1 on the labelled validation split, normal and anomalous rows; it
  needs anomalies there, and falls back to `fpr` with a warning when there are none.
"""

from __future__ import annotations

import warnings

import numpy as np

from deepgen.config import F1Threshold, FprThreshold, PercentileThreshold, PotThreshold, ThresholdSpec
from deepgen.errors import DataError

MIN_POT_EXCESSES = 10  # fewer points above t than this do not pin down a two-parameter tail


def calibrate(val_scores: np.ndarray, val_is_anomaly: np.ndarray | None,
              spec: ThresholdSpec) -> tuple[float, ThresholdSpec]:
    """(threshold, the method really applied after any fallback: what the registry should record) from
    validation scores (N,) and their truth (N,) bool (None: unlabelled, all normal)."""
    scores, is_anomaly = _validation_arrays(val_scores, val_is_anomaly)
    applied, reason, pot_z = _applied(scores, is_anomaly, spec)
    if reason:
        warnings.warn(f"anomaly: {reason}; using {applied.method} {applied.model_dump(exclude={'method'})} "
                      "instead", stacklevel=2)
    if isinstance(applied, F1Threshold):
        return f1_optimal_threshold(scores, is_anomaly), applied
    normal = scores[~is_anomaly]
    if len(normal) == 0:
        raise DataError("anomaly: the validation split has no normal rows to calibrate the threshold on")
    if isinstance(applied, PotThreshold):
        return pot_z, applied
    if isinstance(applied, FprThreshold):
        return fpr_threshold(normal, applied.target_fpr), applied
    if isinstance(applied, PercentileThreshold):
        # "higher": an observed score, so at most (100 - percentile)% of normal rows lie above it
        return float(np.percentile(normal, applied.percentile, method="higher")), applied
    raise ValueError(f"unknown threshold method {applied.method}")  # pragma: no cover - the union is closed


def calibrate_threshold(val_scores: np.ndarray, val_is_anomaly: np.ndarray | None, spec: ThresholdSpec) -> float:
    """The threshold of `calibrate`."""
    return calibrate(val_scores, val_is_anomaly, spec)[0]


def fpr_threshold(normal: np.ndarray, target_fpr: float) -> float:
    """The lowest observed score that leaves at most floor(n * fpr) normal rows above it: the target rate
    exactly where n * fpr is whole and scores are untied (a percentile would leave a row fewer above)."""
    ordered = np.sort(normal)
    allowed = int(np.floor(round(len(ordered) * target_fpr, 9)))  # round: 100 * 0.29 is 28.999999999999996
    return float(ordered[max(len(ordered) - 1 - allowed, 0)])


def applied_spec(val_scores: np.ndarray, val_is_anomaly: np.ndarray | None, spec: ThresholdSpec) -> ThresholdSpec:
    """The method of `calibrate`, without its warning."""
    return _applied(*_validation_arrays(val_scores, val_is_anomaly), spec)[0]


def _applied(scores: np.ndarray, is_anomaly: np.ndarray,
             spec: ThresholdSpec) -> tuple[ThresholdSpec, str | None, float | None]:
    """(the method to apply, why it is not `spec`, the POT threshold when POT is applied): POT is fitted
    here once, since whether its fit can be trusted decides the method."""
    if isinstance(spec, F1Threshold) and not is_anomaly.any():
        return FprThreshold(), "the validation split has no anomalous rows, so the F1-optimal threshold is undefined", \
            None
    if isinstance(spec, PotThreshold) and (~is_anomaly).any():
        # The fallback: the same risk read off the empirical distribution (with few rows, the largest score).
        z, problem = _pot(scores[~is_anomaly], spec.risk, spec.initial_quantile)
        if problem:
            return FprThreshold(target_fpr=spec.risk), problem, None
        return spec, None, z
    return spec, None, None


def _validation_arrays(val_scores, val_is_anomaly) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(val_scores, dtype=np.float64)
    if val_is_anomaly is None:
        return scores, np.zeros(len(scores), bool)
    is_anomaly = np.asarray(val_is_anomaly, dtype=bool)
    if is_anomaly.shape != scores.shape:
        raise ValueError(f"anomaly: {scores.shape} scores but {is_anomaly.shape} labels")
    return scores, is_anomaly


def f1_optimal_threshold(scores: np.ndarray, is_anomaly: np.ndarray) -> float:
    """The observed score t maximising F1 of `scores > t` (below the minimum: flag every row).

    Every distinct score is a candidate, so this is exact, in O(N log N). Of equally good thresholds the
    highest (fewest rows flagged) is returned.
    """
    candidates = np.unique(scores)  # ascending
    candidates = np.concatenate([[np.nextafter(candidates[0], -np.inf)], candidates])
    n_anomalies = int(is_anomaly.sum())
    # Rows strictly above each candidate, counted by binary search in the sorted scores of each class.
    tp = n_anomalies - np.searchsorted(np.sort(scores[is_anomaly]), candidates, side="right")
    fp = int((~is_anomaly).sum()) - np.searchsorted(np.sort(scores[~is_anomaly]), candidates, side="right")
    f1 = 2 * tp / (tp + fp + n_anomalies)  # 2TP / (2TP + FP + FN), with TP + FN = n_anomalies
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(candidates[best])


def _initial_threshold(normal: np.ndarray, initial_quantile: float) -> float:
    return float(np.quantile(normal, initial_quantile))


def _pot(normal: np.ndarray, risk: float, initial_quantile: float) -> tuple[float, str | None]:
    """(the POT threshold, None), or (nan, why it cannot be trusted on these normal scores)."""
    t = _initial_threshold(normal, initial_quantile)
    excesses = int((normal > t).sum())
    if excesses < MIN_POT_EXCESSES:
        return np.nan, (f"only {excesses} normal validation scores lie above the initial quantile "
                        f"{initial_quantile} (POT needs {MIN_POT_EXCESSES} to fit a tail; lower initial_quantile "
                        "or give more validation rows)")
    z, xi, sigma = _pot_fit(normal, t, risk)
    if not np.isfinite(z) or z <= t:
        return np.nan, f"the POT tail fit failed (xi={xi:.3g}, sigma={sigma:.3g})"
    # A fitted tail puts about risk * n rows above z. Many more (beyond a Poisson 3-sigma margin) means the
    # fit has no tail to describe: tied or bounded top scores pin its endpoint at the largest score.
    above, expected = int((normal > z).sum()), risk * len(normal)
    if above > expected + 3 * np.sqrt(expected) + 1:
        return np.nan, (f"the POT tail fit (xi={xi:.3g}) puts the threshold below {above} of {len(normal)} "
                        f"normal validation scores where risk {risk:g} expects {expected:.1f}; the largest "
                        "scores are tied or bounded, so no tail fits")
    return z, None


def _pot_fit(normal: np.ndarray, t: float, risk: float) -> tuple[float, float, float]:
    """(z, xi, sigma): the POT threshold of `pot_threshold` above the initial threshold t, and its
    generalised Pareto fit."""
    from scipy.stats import genpareto

    n = len(normal)
    excesses = normal[normal > t] - t  # (N_t,), all > 0
    xi, _, sigma = genpareto.fit(excesses, floc=0)  # maximum likelihood, location fixed at 0
    ratio = risk * n / len(excesses)  # q n / N_t < 1: the threshold lies beyond t
    with np.errstate(all="ignore"):
        if abs(xi) < 1e-9:
            z = t - sigma * np.log(ratio)
        else:
            # expm1(-xi ln r) = r^(-xi) - 1 without cancellation when xi is small
            z = t + (sigma / xi) * np.expm1(-xi * np.log(ratio))
    return float(z), float(xi), float(sigma)


def pot_threshold(normal: np.ndarray, risk: float, initial_quantile: float) -> float:
    """Peaks over threshold: the score exceeded by a normal row with probability `risk`.

    Above a high initial threshold t, the excesses Y = X - t of (almost) any distribution follow a
    generalised Pareto distribution GPD(xi, sigma) (Pickands-Balkema-de Haan). With n scores of which N_t
    exceed t, P(X > z) ~ (N_t / n) * (1 + xi (z - t) / sigma)^(-1/xi); solving P(X > z_q) = q gives

        z_q = t + (sigma / xi) * ((q n / N_t)^(-xi) - 1)         (Siffer et al. 2017, eq. 1)

    and, as xi -> 0 (exponential tail), z_q = t - sigma * ln(q n / N_t).
    """
    z, problem = _pot(normal, risk, initial_quantile)
    if problem:
        raise DataError(f"anomaly: {problem}; use the fpr or percentile method for these scores")
    return z


def flag(scores: np.ndarray, threshold: float) -> np.ndarray:
    """`score > threshold`, compared in float64 as the threshold was calibrated: in float32 a threshold just
    below a score (the F1 "flag every row" cut) rounds up onto it and that row goes unflagged."""
    return np.asarray(scores, np.float64) > threshold


def threshold_tags(threshold: float, spec: ThresholdSpec) -> dict[str, object]:
    """What the registry records of a calibrated threshold: its value, method and parameters."""
    return {"threshold": threshold, "threshold_method": spec.method, "threshold_params": spec.model_dump_json()}


def evaluate_scores(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC-AUC and PR-AUC of the scores, and precision/recall/F1/FPR of `score > threshold`."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, np.float64)
    truth = np.asarray(is_anomaly, bool)
    flagged = flag(scores, threshold)
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
