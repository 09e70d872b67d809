"""The PR curve logged beside the ROC curve marks the registered threshold where its metrics put it."""

import numpy as np

from deepgen import plots
from deepgen.anomaly import evaluate_scores


def test_the_pr_curve_marks_the_thresholds_precision_and_recall():
    rng = np.random.default_rng(0)
    truth = np.arange(200) < 40
    scores = rng.normal(size=200) + 1.5 * truth
    threshold = float(np.quantile(scores, 0.8))
    fig = plots.pr_curve(scores, truth, threshold)
    curve, floor, point = fig.axes[0].get_lines()
    metrics = evaluate_scores(scores, truth, threshold)
    assert (point.get_xdata()[0], point.get_ydata()[0]) == (metrics["recall"], metrics["precision"])
    assert floor.get_ydata()[0] == truth.mean()  # a random detector's precision
    assert curve.get_label() == f"AP {metrics['pr_auc']:.3f}"
