"""Pictures people would rather see than read; each returns a matplotlib Figure for MLflow."""

from __future__ import annotations

import numpy as np


def subplots(rows: int = 1, columns: int = 1, **kwargs):
    """A Figure and its axes, like pyplot.subplots but outside pyplot: no global figure list to fill up
    in a long-running driver, and the caller's matplotlib backend is left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(rows, columns, **kwargs)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, class_names: list[str]):
    """Rows: true class, columns: predicted class; each cell the share of its row, with the count."""
    k = len(class_names)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (truth, predicted), 1)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = subplots(figsize=(1.2 * k + 2, 1.1 * k + 1.5))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{shares[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title="test confusion matrix")
    ax.set_xticklabels(class_names, rotation=30, ha="right")
    ax.set_yticklabels(class_names)
    fig.tight_layout()
    return fig


def score_histogram(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float):
    fig, ax = subplots(figsize=(5, 3.2))
    bins = np.histogram_bin_edges(scores, bins=40)
    ax.hist(scores[~is_anomaly], bins=bins, alpha=0.6, label="normal", density=True)
    if is_anomaly.any():
        ax.hist(scores[is_anomaly], bins=bins, alpha=0.6, label="anomalous", density=True)
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score (reconstruction error)", ylabel="density", title="test scores")
    ax.legend()
    fig.tight_layout()
    return fig


def roc_curve(scores: np.ndarray, is_anomaly: np.ndarray):
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    fpr, tpr, _ = sk_roc(is_anomaly, scores)
    fig, ax = subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(is_anomaly, scores):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def pr_curve(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float):
    """Precision against recall over every threshold (anomalies the positive class), with the registered
    threshold's point marked and the share of anomalies (a random detector's precision) as the floor."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    from deepgen.anomaly import evaluate_scores

    precision, recall, _ = precision_recall_curve(is_anomaly, scores)
    at = evaluate_scores(scores, is_anomaly, threshold)  # the registered precision and recall
    at_p, at_r = at["precision"], at["recall"]
    fig, ax = subplots(figsize=(4, 4))
    ax.plot(recall, precision, label=f"AP {average_precision_score(is_anomaly, scores):.3f}")
    ax.axhline(is_anomaly.mean(), color="grey", linestyle=":", label=f"anomaly share {is_anomaly.mean():.3f}")
    ax.plot([at_r], [at_p], "ko", label=f"threshold: P {at_p:.2f} R {at_r:.2f}")
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall (test)", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def reconstructions(inputs: np.ndarray, outputs: np.ndarray, shape: list[int], n: int = 8):
    """Top row inputs, bottom row reconstructions, for image rows (C, H, W)."""
    n = min(n, len(inputs))
    fig, axes = subplots(2, n, figsize=(1.2 * n, 2.6), squeeze=False)
    for i in range(n):
        for row, img in ((0, inputs[i]), (1, outputs[i])):
            ax = axes[row][i]
            ax.imshow(img.reshape(shape)[0], cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
    axes[0][0].set_title("input", fontsize=8, loc="left")
    axes[1][0].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def image_tiles(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] tiled row by row into one uint8 picture for MLflow's `log_image`:
    (rows*H, columns*W) for one channel, (.., .., 3) for RGB, (.., .., 4) for RGBA, the channel mean otherwise."""
    n, c, h, w = images.shape
    if c not in (1, 3, 4):
        images, c = images.mean(1, keepdims=True), 1
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), np.float32)
    for i, img in enumerate(np.clip(images, 0, 1)):
        r, col = divmod(i, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img.transpose(1, 2, 0)
    grid = (grid * 255).round().astype(np.uint8)
    return grid[..., 0] if c == 1 else grid


def sample_grid(samples: np.ndarray, shape: list[int], columns: int = 8):
    """Generated image rows (N, C*H*W) in [0, 1], e.g. a VAE's decoded prior draws, as a grid."""
    rows = -(-len(samples) // columns)
    fig, axes = subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(samples):
            img = samples[i].reshape(shape)  # (C, H, W)
            ax.imshow(img.transpose(1, 2, 0) if shape[0] == 3 else img[0], cmap="gray", vmin=0, vmax=1)
    fig.suptitle("samples from the prior", fontsize=9)
    fig.tight_layout()
    return fig


def segmentations(images: np.ndarray, masks: np.ndarray, predictions: np.ndarray, shape: list[int]):
    """Rows: image, true mask, predicted mask."""
    n = len(images)
    fig, axes = subplots(3, n, figsize=(1.3 * n, 4), squeeze=False)
    _, h, w = shape
    for i in range(n):
        for row, img in enumerate((images[i].reshape(shape).mean(0), masks[i].reshape(h, w),
                                   predictions[i].reshape(h, w))):
            axes[row][i].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[row][i].axis("off")
    for row, title in enumerate(("image", "mask", "predicted")):
        axes[row][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def search_scatter(trials: list[dict], metric: str):
    """One panel per searched field: the value each trial tried against its final metric."""
    fields = list(trials[0]["values"])
    fig, axes = subplots(1, len(fields), figsize=(3.6 * len(fields), 3.2), squeeze=False)
    for ax, field in zip(axes[0], fields):
        xs = [r["values"][field] for r in trials]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positions = xs if numeric else [sorted(map(str, set(xs))).index(str(x)) for x in xs]
        ax.scatter(positions, [r["metric"] for r in trials], c=[r["epochs"] for r in trials], cmap="viridis")
        if numeric and min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(set(map(str, xs)))), sorted(set(map(str, xs))))
        ax.set(xlabel=field, ylabel=metric)
    fig.suptitle("search: colour = epochs run (ASHA stops trials early)", fontsize=9)
    fig.tight_layout()
    return fig
