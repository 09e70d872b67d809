import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from deepgen.anomaly import calibrate_threshold, evaluate_scores
from deepgen.config import FprThreshold, PercentileThreshold
from deepgen.errors import DataError


def test_threshold_at_target_fpr_flags_that_share_of_normal_rows():
    normal = np.random.default_rng(0).normal(size=10_000)
    t = calibrate_threshold(normal, FprThreshold(target_fpr=0.05))
    assert (normal > t).mean() == pytest.approx(0.05, abs=0.002)
    assert (normal > t).mean() <= 0.05  # never above the target on the calibration rows


def test_percentile_threshold():
    assert calibrate_threshold(np.arange(101.0), PercentileThreshold(percentile=90)) == 90.0


def test_no_normal_rows_is_an_error():
    with pytest.raises(DataError, match="no normal rows"):
        calibrate_threshold(np.array([]), FprThreshold())


def test_metrics_at_the_threshold():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.8])
    truth = np.array([0, 0, 0, 1, 1, 1], bool)
    m = evaluate_scores(scores, truth, threshold=0.35)
    # flagged: 0.9, 0.4, 0.8 -> tp 3, fp 0
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == pytest.approx(1.0)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert m["pr_auc"] == pytest.approx(average_precision_score(truth, scores))
    m = evaluate_scores(scores, truth, threshold=0.5)  # flagged: 0.9, 0.8
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3) and m["fpr"] == 0.0


def test_single_class_test_split_warns_and_omits_ranking_metrics():
    with pytest.warns(UserWarning, match="only one class"):
        m = evaluate_scores(np.array([0.1, 0.5]), np.array([False, False]), 0.3)
    assert "roc_auc" not in m and m["fpr"] == 0.5
