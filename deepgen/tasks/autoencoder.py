"""The anomaly detectors' family: autoencoders (dense, conv, overcomplete, sparse, denoising, VAE) and the
masked autoencoder, trained, calibrated, exported (family "anomaly") and served alike.

Autoencoders as a task: minimise the model's objective on normal rows (reconstruction error, plus the
variant's penalty or KL term); score = the model's anomaly_score (reconstruction error, or a VAE's -ELBO).

Evaluation calibrates the anomaly threshold on the validation split (deepgen.anomaly: normal rows' scores,
or all labelled rows for the F1-optimal threshold) and reports detection metrics on the test split.

mae: minimise the squared error of the masked patches (deepgen.models.vit); everything after training is
the autoencoders': threshold calibrated on normal validation scores, detection metrics on test, the
`anomaly` export, `deepgen score`, the pyfunc and the gate. Its score is its own: the masked-patch error
averaged over the model's K fixed masks (`anomaly.score` reconstruction, what `auto` means for it).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from deepgen import anomaly, plots
from deepgen.batch_scoring import map_split, score_split
from deepgen.config import PipelineSpec, resolve_input_range, resolve_loss, resolve_score
from deepgen.data.dataset import check_normal_rows, iter_split, normal_mask
from deepgen.data.manifest import Manifest
from deepgen.errors import DataError
from deepgen.export import ModelMeta, load_weights, read_meta, read_rows, save_model_dir, table_rows
from deepgen.models import AUTOENCODERS, build_autoencoder
from deepgen.models.autoencoders import Autoencoder, AutoencoderConfig
from deepgen.models.vae import VAE
from deepgen.models.vit import MAEConfig, MaskedAutoencoderViT
from deepgen.scoring import STATELESS, RowScorer, Scorer
from deepgen.serving import Predictor, example_rows, input_rows
from deepgen.tasks import Evaluation, unwrap
from deepgen.tasks.vit import vit_config
from deepgen.train.optim import ScheduledTask

WATCH_IMAGES = 8  # validation images whose reconstructions are logged while training


def autoencoder_config(spec_model, shape: list[int], binary_features: bool = False) -> AutoencoderConfig:
    """The model's config dataclass: the spec fields it shares by name, the row shape, the stack widths, and
    the loss `auto` resolves to for this data (bce for binary inputs, mse otherwise)."""
    m = spec_model
    config_cls = AUTOENCODERS[m.kind][1]
    conv = m.kind == "conv_autoencoder" or getattr(m, "architecture", "dense") == "conv"
    values = {f.name: getattr(m, f.name) for f in fields(config_cls) if f.name in type(m).model_fields}
    values |= {"input_shape": tuple(shape), "hidden": tuple(m.channels if conv else m.hidden)}
    if m.kind == "overcomplete_autoencoder" and m.latent_dim is None:
        values["latent_dim"] = 2 * math.prod(shape)
    if m.kind == "vae":  # `loss` and `decoder` name one choice; the model reads `decoder`
        likelihood = m.likelihood(binary_features)
        values |= {"decoder": likelihood, "loss": "mse" if likelihood == "gaussian" else "bce"}
    else:
        values["loss"] = resolve_loss(m.loss, binary_features)
    return config_cls(**values)


class AutoencoderTask(ScheduledTask):
    def __init__(self, spec: PipelineSpec, manifest: Manifest):
        self.spec = spec
        self.manifest = manifest
        self.config = autoencoder_config(spec.model, manifest.shape, manifest.binary_features)
        self.score = resolve_score(spec.anomaly.score, manifest.shape, spec.model.kind)  # `auto` for this data
        self.input_range = resolve_input_range(spec.anomaly.input_range, manifest.shape)
        self.scorer: Scorer | None = None  # fitted by evaluate, exported with the model
        self._watched: torch.Tensor | None = None  # the validation images whose reconstructions are logged

    def build_models(self):
        model = build_autoencoder(self.spec.model.kind, self.config)
        if self.input_range == "normal":
            model.set_input_range(*self.normal_range())
        return {"model": model}

    def build_models_for_weights(self):
        """The modules a checkpoint's weights are loaded into: the input range is among those weights
        (buffers), so the training split is not read (the driver reads no prepared rows)."""
        if self.input_range != "normal":  # nothing data-derived to skip (an MAE, prepared-range images)
            return self.build_models()
        return {"model": build_autoencoder(self.spec.model.kind, self.config)}

    def normal_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature (min, max) over the normal training rows, (D,) each: the rows the model learns;
        read chunk by chunk (deepgen.data.dataset.iter_split), never the whole split at once."""
        lo = hi = None
        for x, y in iter_split(self.spec.data_dir, "train"):
            x = x[normal_mask(y, self.spec.anomaly, len(x))]
            if len(x):
                lo = x.min(0) if lo is None else np.minimum(lo, x.min(0))
                hi = x.max(0) if hi is None else np.maximum(hi, x.max(0))
        if lo is None:  # no normal row at all: the one-line refusal
            check_normal_rows(self.spec.data_dir, self.spec.anomaly)
        return torch.from_numpy(lo), torch.from_numpy(hi)

    def build_optimizers(self, models):
        t = self.spec.train
        # an overcomplete spec carries its own default; the larger of the two applies
        weight_decay = max(t.weight_decay, getattr(self.spec.model, "weight_decay", 0.0))
        return {"model": torch.optim.AdamW(models["model"].parameters(), lr=t.lr, weight_decay=weight_decay)}

    def train_step(self, models, optimizers, batch):
        model = models["model"]
        x = batch["features"]  # (B, D) clean rows
        ae: Autoencoder = unwrap(model)
        # forward through the DDP wrapper (it syncs gradients); the objective is the plain module's method;
        # the loss compares with the clean x
        terms = self.update(models, optimizers, lambda: ae.objective(x, model(ae.corrupt(x))))
        return {k: v.detach() for k, v in terms.items()}

    def eval_step(self, models, batch):
        model, x = models["model"], batch["features"]
        terms = unwrap(model).objective(x, model(x))  # batch means; no corruption outside training
        return {k: v * len(x) for k, v in terms.items()}

    def epoch_extras(self, models, epoch: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Watching it train (rank 0, after each epoch): every tracking.figures_every epochs and at the last,
        the same WATCH_IMAGES validation images (top row) and their reconstructions (bottom row), for images."""
        every = self.spec.tracking.figures_every
        if len(self.manifest.shape) != 3 or not every or (epoch % every and epoch != self.spec.train.epochs):
            return {}, {}
        if self._watched is None:
            self._watched = torch.tensor(next(iter_split(self.spec.data_dir, "val"))[0][:WATCH_IMAGES])
        model = unwrap(models["model"])
        was_training = model.training
        with torch.no_grad():
            x = self._watched.to(next(model.parameters()).device)
            recon = model.eval().reconstruct(x).float().cpu().numpy()
        model.train(was_training)
        shape = (-1, *self.manifest.shape)
        pairs = np.concatenate([self._watched.numpy().reshape(shape), recon.reshape(shape)])
        return {}, {"reconstructions": plots.image_tiles(pairs, columns=len(self._watched))}

    def fit_scorer(self, model, data_dir: Path) -> Scorer:
        """The `anomaly.score` statistics, fitted on the normal training rows (the rows the model learnt)."""
        if self.score in STATELESS:  # nothing to fit: the training split is not read
            return Scorer(self.score)
        # chunk by chunk here, or on Ray Data actors for a split Ray Data prepared: it may not fit in memory
        return Scorer.fit_map(self.score, model,
                              lambda fn: map_split(OnNormalRows(fn, self.spec.anomaly), data_dir, "train"))

    def evaluate(self, models, data_dir: Path) -> Evaluation:
        model = models["model"].eval()
        spec = self.spec
        self.scorer = self.fit_scorer(model, data_dir)
        # scored split by split (chunk by chunk here, or by Ray Data actors for a split Ray Data prepared):
        # the threshold and the metrics need the score arrays only
        score = RowScorer(model, self.scorer)
        val_scores, y_val, _ = score_split(score, data_dir, "val")
        val_is_anomaly = ~normal_mask(y_val, spec.anomaly, len(val_scores))
        # after a fallback (f1 without validation anomalies), the registry records the method really used
        threshold, method = anomaly.calibrate(val_scores, val_is_anomaly, spec.anomaly.threshold)
        scores, y_test, x_test = score_split(score, data_dir, "test")  # x_test: a few rows, for pictures
        is_anomaly = ~normal_mask(y_test, spec.anomaly, len(scores))
        metrics = anomaly.evaluate_scores(scores, is_anomaly, threshold)
        tags = anomaly.threshold_tags(threshold, method) | {"score": self.score, "resolved_loss": self.config.loss,
                                                             "input_range": self.input_range}
        ev = Evaluation(metrics, registry_tags=tags)
        ev.figures = self._figures(model, x_test, scores, is_anomaly, threshold)
        return ev

    def _figures(self, model, x_test, scores, is_anomaly, threshold) -> dict:
        figures = {"score_histogram": plots.score_histogram(scores, is_anomaly, threshold)}
        if is_anomaly.any() and not is_anomaly.all():
            figures["roc_curve"] = plots.roc_curve(scores, is_anomaly)
            figures["pr_curve"] = plots.pr_curve(scores, is_anomaly, threshold)
        if len(self.manifest.shape) == 3:
            with torch.no_grad():
                recon = model.reconstruct(torch.tensor(x_test[:8])).numpy()
            figures["reconstructions"] = plots.reconstructions(x_test[:8], recon, self.manifest.shape)
            if isinstance(model, VAE):  # what the generative model makes of draws from its prior
                figures["prior_samples"] = plots.sample_grid(model.sample(32).numpy(), self.manifest.shape)
        return figures

    def export(self, dest: Path, models, evaluation: Evaluation) -> Path:
        dest = save_model_dir(dest, "anomaly", self.spec.model, self.manifest, models["model"],
                              evaluation.registry_tags)
        scorer = self.scorer or self.fit_scorer(models["model"].eval(), self.spec.data_dir)
        scorer.save(dest)
        return dest


class OnNormalRows:
    """fn(x) of a chunk's normal rows, as map_split's fn(x, labels); picklable (Ray Data's actors hold it)."""

    def __init__(self, fn, anomaly_spec):
        self.fn, self.anomaly = fn, anomaly_spec

    def __call__(self, x: np.ndarray, y: np.ndarray | None):
        return self.fn(x[normal_mask(y, self.anomaly, len(x))])


# --- masked autoencoder ----------------------------------------------------------------------------


class MAETask(AutoencoderTask):
    """The autoencoder task with the MAE's model, objective and validation loss; scoring, calibration,
    evaluation, pictures and export are AutoencoderTask's."""

    def __init__(self, spec: PipelineSpec, manifest: Manifest):
        if spec.anomaly.score not in ("auto", "reconstruction"):
            raise DataError(f"anomaly.score: {spec.anomaly.score} needs an autoencoder's code or full "
                            "reconstruction; model.kind mae scores by its masked-patch error (auto or reconstruction)")
        self.spec, self.manifest = spec, manifest
        self.config = vit_config(MAEConfig, spec.model, manifest.shape)
        self.score = "reconstruction"  # the model's anomaly_score: masked-patch error over K fixed masks
        self.input_range = "prepared"  # images: the prepared scale (anomaly.input_range auto)
        self.scorer = None
        self._watched = None  # the validation images whose reconstructions are logged while training

    def build_models(self):
        return {"model": MaskedAutoencoderViT(self.config)}

    def train_step(self, models, optimizers, batch):
        model, x = models["model"], batch["features"]
        mae: MaskedAutoencoderViT = unwrap(model)
        # minimise the mean squared error of the masked patches under a fresh random mask per image
        terms = self.update(models, optimizers, lambda: mae.objective(model(x)))
        return {k: v.detach() for k, v in terms.items()}

    def eval_step(self, models, batch):
        # on the K fixed masks: the validation loss of every epoch is measured on the same patches, and it
        # is the anomaly score's mean over the normal validation rows
        return {"loss": unwrap(models["model"]).anomaly_score(batch["features"]).sum()}


class AnomalyScorer(Predictor):
    """An exported autoencoder with its scaler and threshold: raw rows in, scores and flags out."""

    def __init__(self, model: Autoencoder, meta: ModelMeta, scorer=None):
        self.model = model.eval()
        self.meta = meta
        self.scorer = scorer or Scorer("reconstruction")

    @property
    def threshold(self) -> float:
        return float(self.meta.extra["threshold"])

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyScorer:
        meta = read_meta(directory)
        if meta.family != "anomaly":
            raise DataError(f"{directory}: a {meta.family} model, not an anomaly detector")
        model = load_weights(directory, build_autoencoder(meta.kind, meta.config))
        return cls(model, meta, Scorer.load(directory))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scaled rows (N, D) -> anomaly scores (N,) float64, by the score the model was registered with."""
        return self.scorer.score(self.model, x)

    @staticmethod
    def scores_of(model: Autoencoder, x: np.ndarray) -> np.ndarray:
        """The model's own score (reconstruction error, a VAE's -ELBO) of scaled rows (N, D), float64."""
        return Scorer("reconstruction").score(model, x)

    def evaluate(self, data_dir: Path, anomaly_spec) -> dict[str, float] | None:
        """Detection metrics on another dataset's test split at this model's own threshold (for the gate).
        The split was scaled for the new model; its rows are mapped back to raw values and scaled as this
        model was trained (a table's min-max range moves when the data gains rows)."""
        from deepgen.data.dataset import split_schema
        from deepgen.data.manifest import read_manifest

        if split_schema(data_dir, "test").field("features").type.list_size != self.meta.num_features:
            return None
        theirs = read_manifest(data_dir).scaler
        score = RowScorer(self.model, self.scorer, self.meta.scaler, scaled_by=theirs)
        scores, y_test, _ = score_split(score, data_dir, "test")  # the gate holds scores only
        truth = ~normal_mask(y_test, anomaly_spec, len(scores))
        return anomaly.evaluate_scores(scores, truth, self.threshold)

    def read_input(self, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """A file of raw rows -> (scaled rows (N, D), labels or None), checked against the model's shape."""
        x, labels = read_rows(Path(path), self.meta)
        if x.shape[1] != self.meta.num_features:
            raise DataError(f"{path}: rows have {x.shape[1]} features, the model expects {self.meta.num_features}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(1).sum())
            raise DataError(f"{path}: {bad} rows hold NaN or infinite values; clean or drop them")
        return x, labels

    def answer(self, model_input) -> pd.DataFrame:
        """DataFrame(score, is_anomaly) of prepared rows (a `features` column), a table's feature columns by
        name, or raw rows."""
        if isinstance(model_input, pd.DataFrame) and "features" in model_input.columns:  # prepared, scaled rows
            x = np.stack(model_input["features"].to_numpy()).astype(np.float32)
        elif isinstance(model_input, pd.DataFrame) and self.meta.feature_names:  # a table's columns, by name
            x = table_rows(pa.Table.from_pandas(model_input, preserve_index=False), self.meta, "model input")
        else:
            x = self.meta.scaler.apply(input_rows(model_input))
        scores = self.score(x)
        return pd.DataFrame({"score": scores, "is_anomaly": anomaly.flag(scores, self.threshold)})

    def example_input(self):
        raw = example_rows(self.meta)
        return pd.DataFrame(raw, columns=self.meta.feature_names) if self.meta.feature_names else raw


TASKS = {**dict.fromkeys(AUTOENCODERS, AutoencoderTask), "mae": MAETask}
PREDICTORS = {"anomaly": AnomalyScorer}


def next_command(kind: str, name: str) -> str:
    return f"deepgen score --model {name}@champion --input FILE --output scores.parquet"
