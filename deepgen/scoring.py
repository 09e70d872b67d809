"""Anomaly scores of a trained autoencoder, beyond its reconstruction error (`anomaly.score`).

An autoencoder gives more than one signal that a row is unlike its training data:

    reconstruction  the model's own score: its reconstruction error under the training loss (mean over
                    features), or a VAE's -ELBO (`model.score`)
    smoothed        images: the squared error of the residual x - r after a Gaussian blur (sigma = side / 28
                    pixels: 1 px on 28 x 28 images, next to none on 8 x 8 ones). A reconstruction is never
                    pixel-exact on normal rows either (edges a pixel off, textures); blurring the residual
                    cancels that fine-grained error and keeps the structural one an anomaly leaves (a
                    stroke where the normal class has none). Tables: the plain squared error.
    standardized    the squared error of each feature divided by that feature's mean squared error on
                    normal rows, averaged: a pixel that is always hard to rebuild weighs less than one the
                    model rebuilds exactly, so an error where normal rows have none stands out
    latent          the Mahalanobis distance of the code h = f(x) to the normal rows' codes (Ledoit-Wolf
                    shrunk covariance): an input can be rebuilt well from a code that no normal row has
    combined        z(log standardized) + z(log latent), each standardised by its mean and spread on
                    normal rows: an anomaly needs to look normal in neither the input space nor the code

Every statistic is fitted once, after training, on the *normal training rows* (the rows the model learnt;
the validation split is left to calibrate the threshold) and travels with the exported model
(`SCORE_STATS`, plain arrays read with allow_pickle=False), so `deepgen score` and the MLflow pyfunc give
exactly the scores evaluation gave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCORES = ("reconstruction", "smoothed", "standardized", "latent", "combined")
STATELESS = ("reconstruction", "smoothed")  # scores that need no statistics of the normal rows
SCORE_STATS = "score-stats.npz"
BATCH = 1024


def _batches(x: np.ndarray) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), BATCH):
        yield torch.tensor(x[i:i + BATCH], dtype=torch.float32)  # a copy: read-only arrays are fine


@torch.no_grad()
def parts(model, x: np.ndarray, want: set[str]) -> dict[str, np.ndarray]:
    """One pass over rows (N, D): the model's own score `own` (N,), the squared error of every feature
    `sq_error` (N, D), the mean squared blurred residual `smoothed` (N,) and the code `code` (N, latent),
    those asked for, in float64."""
    model.eval()
    shape = model.config.input_shape
    out: dict[str, list[np.ndarray]] = {k: [] for k in want}
    for xb in _batches(x):
        if "own" in want:
            out["own"].append(model.anomaly_score(xb).double().numpy())
        if want - {"own"}:
            forward = model(xb)  # one pass for the code and the reconstruction (eval: a VAE decodes its mean)
            residual = torch.sigmoid(forward.logits.double()) - model.normalize(xb).double()  # (B, D)
        if "code" in want:
            out["code"].append(forward.code.double().numpy())
        if "sq_error" in want:
            out["sq_error"].append(residual.pow(2).numpy())
        if "smoothed" in want:
            out["smoothed"].append(gaussian_blur(residual, shape).pow(2).mean(1).numpy())
    width = {"own": (), "smoothed": (), "code": (getattr(model.config, "latent_dim", 0),),  # an MAE has no code
             "sq_error": (x.shape[1] if x.ndim > 1 else 0,)}
    return {k: np.concatenate(v) if v else np.zeros((0, *width[k])) for k, v in out.items()}


REFERENCE_SIDE = 28  # a blur of 1 px at MNIST's 28 x 28, in proportion elsewhere


def gaussian_blur(rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Rows (B, C*H*W) of images (C, H, W) blurred by a separable Gaussian of sigma = min(H, W) / 28 px
    (borders reflected); rows that are not images come back unchanged."""
    if len(shape) != 3:
        return rows
    c, h, w = shape
    sigma = min(h, w) / REFERENCE_SIDE
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=rows.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r+1,)
    img = rows.view(-1, c, h, w)
    pad = (min(radius, w - 1), min(radius, w - 1), 0, 0)
    img = F.conv2d(F.pad(img, pad, mode="reflect") if w > 1 else img, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
                   [..., radius - pad[0]:radius + pad[0] + 1], groups=c)  # along W
    pad = (0, 0, min(radius, h - 1), min(radius, h - 1))
    img = F.conv2d(F.pad(img, pad, mode="reflect") if h > 1 else img, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
                   [..., radius - pad[2]:radius + pad[2] + 1, :], groups=c)  # along H
    return img.reshape(len(rows), -1)


class Scorer:
    """A score method and the statistics it needs (empty for `reconstruction`)."""

    def __init__(self, method: str, stats: dict[str, np.ndarray] | None = None):
        if method not in SCORES:
            raise ValueError(f"anomaly.score: unknown score {method!r}; one of {', '.join(SCORES)}")
        self.method = method
        self.stats = stats or {}

    @classmethod
    def fit(cls, method: str, model, x_normal: np.ndarray) -> Scorer:
        """Fit the statistics of `method` on normal training rows (N, D)."""
        return cls.fit_chunks(method, model, lambda: iter([x_normal]))

    @classmethod
    def fit_chunks(cls, method: str, model, chunks: Callable[[], Iterator[np.ndarray]]) -> Scorer:
        """Fit the statistics of `method` on normal training rows given chunk by chunk: `chunks()` starts a
        pass over them ((n, D) arrays)."""
        return cls.fit_map(method, model, lambda fn: (fn(x) for x in chunks()))

    @classmethod
    def fit_map(cls, method: str, model, map_rows: Callable[[Callable], Iterator]) -> Scorer:
        """Fit the statistics of `method` on normal training rows that `map_rows(fn)` passes over, giving
        fn(rows) of each chunk of them, in any order: in this process, or on Ray Data actors that each
        hold fn (deepgen.batch_scoring.map_split; fn is picklable). What comes back is a chunk's sums, its
        codes (n, latent) and, for `combined`, one number a row (from a second pass), never the rows: the
        split may be larger than memory."""
        if method in STATELESS:
            return cls(method)
        want = {"sq_error", "code"} - ({"code"} if method == "standardized" else set()) \
            - ({"sq_error"} if method == "latent" else set())
        error_sum, n, codes = 0.0, 0, []
        for part in map_rows(_Sums(model, want)):
            n += part["n"]
            if "sq_error" in want:
                error_sum = error_sum + part["sq_error"]
            if "code" in want:
                codes.append(part["code"])
        if n < 2:
            raise ValueError(f"anomaly.score {method}: needs at least 2 normal training rows")
        stats: dict[str, np.ndarray] = {}
        if "sq_error" in want:
            mse = error_sum / n  # (D,)
            # a feature no normal row gets wrong (a border pixel) would divide by ~0: floor it at a
            # thousandth of the mean error, so a tiny error there is large, not infinite
            stats["feature_mse"] = np.maximum(mse, 1e-3 * mse.mean() + 1e-12)
        if "code" in want:
            codes = np.concatenate(codes)
            stats |= _latent_stats(codes)
        if method == "combined":
            error = np.concatenate(list(map_rows(_StandardizedErrors(model, stats["feature_mse"]))))
            stats["log_stats"] = np.array([_mean_std(np.log(error + _EPS)),
                                           _mean_std(np.log(_mahalanobis(codes, stats) + _EPS))]).ravel()
        return cls(method, stats)

    def score(self, model, x: np.ndarray) -> np.ndarray:
        """Scores (N,) float64 of rows (N, D): higher is less like the normal training rows."""
        if self.method == "reconstruction":
            return parts(model, x, {"own"})["own"]
        if self.method == "smoothed":
            return parts(model, x, {"smoothed"})["smoothed"]
        if self.method == "standardized":
            return (parts(model, x, {"sq_error"})["sq_error"] / self.stats["feature_mse"]).mean(1)
        p = parts(model, x, {"sq_error", "code"} if self.method == "combined" else {"code"})
        distance = _mahalanobis(p["code"], self.stats)
        if self.method == "latent":
            return distance
        m_err, s_err, m_lat, s_lat = self.stats["log_stats"]
        error = np.log((p["sq_error"] / self.stats["feature_mse"]).mean(1) + _EPS)
        return (error - m_err) / s_err + (np.log(distance + _EPS) - m_lat) / s_lat

    # --- the exported model's file ---

    def save(self, directory: Path) -> None:
        np.savez(Path(directory) / SCORE_STATS, method=np.array(self.method), **self.stats)

    @classmethod
    def load(cls, directory: Path) -> Scorer:
        """The scorer saved with a model; a folder without one (older exports) scores by reconstruction."""
        path = Path(directory) / SCORE_STATS
        if not path.is_file():
            return cls("reconstruction")
        with np.load(path, allow_pickle=False) as f:
            return cls(str(f["method"]), {k: f[k] for k in f.files if k != "method"})


class _Sums:
    """Scorer.fit_map's first pass over a chunk of normal rows: their count, summed squared error per
    feature, codes."""

    def __init__(self, model, want: set[str]):
        self.model, self.want = model.eval(), want

    def __call__(self, x: np.ndarray) -> dict:
        p = parts(self.model, x, self.want)
        return {"n": len(x), "sq_error": p["sq_error"].sum(0) if "sq_error" in p else None, "code": p.get("code")}


class _StandardizedErrors:
    """Scorer.fit_map's second pass (`combined`): each normal row's standardized error."""

    def __init__(self, model, feature_mse: np.ndarray):
        self.model, self.feature_mse = model.eval(), feature_mse

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (parts(self.model, x, {"sq_error"})["sq_error"] / self.feature_mse).mean(1)


class RowScorer:
    """Prepared rows (n, D) -> scores (n,) of one model by one Scorer, as a picklable object: Ray Data's
    actors each hold one (deepgen.batch_scoring.map_split). `scaler` / `scaled_by`: rows prepared for another
    data set are first mapped to this model's scale (the gate rescoring a champion; Scaler.rescale)."""

    def __init__(self, model, scorer: Scorer, scaler=None, scaled_by=None):
        self.model, self.scorer, self.scaler, self.scaled_by = model.eval(), scorer, scaler, scaled_by

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.scaler is not None:
            x = self.scaler.rescale(x, scaled_by=self.scaled_by)
        return self.scorer.score(self.model, x)


_EPS = 1e-12


def _mean_std(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std() + 1e-12)


def _latent_stats(codes: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and precision of the normal codes (N, latent), covariance shrunk towards a scaled identity
    (Ledoit & Wolf 2004): with a few hundred rows and a wide code the sample covariance is singular."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(codes)
    return {"latent_mean": lw.location_, "latent_precision": lw.precision_}


def _mahalanobis(codes: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    d = codes - stats["latent_mean"]  # (N, latent)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, stats["latent_precision"], d), 0))
