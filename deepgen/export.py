"""The exported model: a folder of weights plus a JSON description, loadable without unpickling code.

    DIR/weights.pt          state_dict only, read with torch.load(weights_only=True)
    DIR/deepgen-model.json  family, model kind and config, row shape, scaler, feature names, and the
                            family's extras (for anomaly detectors: the threshold and its method)

`load_exported` reads any family's folder; `AnomalyScorer` turns raw input files into anomaly scores exactly
as the pipeline scored its test split.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel

from deepgen.data.dataset import features_to_numpy
from deepgen.data.prepare import Manifest, Scaler
from deepgen.data.sources import load_npy, load_table, read_idx_file, table_features
from deepgen.errors import DataError
from deepgen.models import build_autoencoder
from deepgen.models.autoencoders import Autoencoder

WEIGHTS = "weights.pt"
META = "deepgen-model.json"


class ModelMeta(BaseModel):
    family: str  # which loader reads this folder: "anomaly", ...
    kind: str  # model.kind of the pipeline
    config: dict[str, Any]  # the model's own config dataclass, as a dict
    shape: list[int]  # one input row
    scaler: Scaler
    feature_names: list[str] | None
    extra: dict[str, Any]  # family specifics, e.g. the anomaly threshold and its method

    @property
    def num_features(self) -> int:
        return int(np.prod(self.shape))


def save_model_dir(dest: Path, family: str, model_spec, manifest: Manifest, model: torch.nn.Module,
                   extra: dict[str, Any]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest / WEIGHTS)
    meta = ModelMeta(family=family, kind=model_spec.kind, config=asdict(model.config), shape=manifest.shape,
                     scaler=manifest.scaler, feature_names=manifest.feature_names, extra=extra)
    (dest / META).write_text(meta.model_dump_json(indent=2))
    return dest


def read_meta(directory: str | Path) -> ModelMeta:
    return ModelMeta.model_validate_json((Path(directory) / META).read_text())


def load_weights(directory: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


class AnomalyScorer:
    """An exported autoencoder with its scaler and threshold: raw rows in, scores and flags out."""

    def __init__(self, model: Autoencoder, meta: ModelMeta, scorer=None):
        from deepgen.scoring import Scorer

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
        from deepgen.scoring import Scorer

        model = load_weights(directory, build_autoencoder(meta.kind, meta.config))
        return cls(model, meta, Scorer.load(directory))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scaled rows (N, D) -> anomaly scores (N,) float64, by the score the model was registered with."""
        return self.scorer.score(self.model, x)

    @staticmethod
    def scores_of(model: Autoencoder, x: np.ndarray) -> np.ndarray:
        """The model's own score (reconstruction error, a VAE's -ELBO) of scaled rows (N, D), float64."""
        from deepgen.scoring import Scorer

        return Scorer("reconstruction").score(model, x)

    def evaluate(self, data_dir: Path, anomaly_spec) -> dict[str, float] | None:
        """Detection metrics on another dataset's test split at this model's own threshold (for the gate).
        The split was scaled for the new model; its rows are mapped back to raw values and scaled as this
        model was trained (a table's min-max range moves when the data gains rows)."""
        from deepgen import anomaly
        from deepgen.data.dataset import load_split, normal_mask
        from deepgen.data.prepare import read_manifest

        x_test, y_test = load_split(data_dir, "test")
        if x_test.shape[1] != self.meta.num_features:
            return None
        x_test = self.meta.scaler.rescale(x_test, scaled_by=read_manifest(data_dir).scaler)
        truth = ~normal_mask(y_test, anomaly_spec, len(x_test))
        return anomaly.evaluate_scores(self.score(x_test), truth, self.threshold)

    def read_input(self, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """A file of raw rows -> (scaled rows (N, D), labels or None), checked against the model's shape."""
        x, labels = read_rows(Path(path), self.meta)
        if x.shape[1] != self.meta.num_features:
            raise DataError(f"{path}: rows have {x.shape[1]} features, the model expects {self.meta.num_features}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(1).sum())
            raise DataError(f"{path}: {bad} rows hold NaN or infinite values; clean or drop them")
        return x, labels


class SegmentationPredictor:
    """An exported UNet: images in, binary masks out."""

    def __init__(self, model, meta: ModelMeta):
        self.model = model.eval()
        self.meta = meta

    @classmethod
    def load(cls, directory: str | Path) -> SegmentationPredictor:
        from deepgen.models.unet import UNet, UNetConfig

        meta = read_meta(directory)
        config = UNetConfig(**{**meta.config, "input_shape": tuple(meta.config["input_shape"])})
        return cls(load_weights(directory, UNet(config)), meta)

    @staticmethod
    @torch.no_grad()
    def masks_of(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scaled image rows (N, C*H*W) -> masks (N, H*W) bool."""
        model.eval()
        out = [(model(torch.tensor(x[i:i + batch_size], dtype=torch.float32)) > 0).numpy()
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), bool)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scaled image rows -> masks (N, H, W) uint8 in {0, 1}."""
        _, h, w = self.meta.shape
        return self.masks_of(self.model, x).reshape(-1, h, w).astype(np.uint8)

    def read_input(self, path: str | Path) -> np.ndarray:
        x, _ = read_rows(Path(path), self.meta)
        if x.shape[1] != self.meta.num_features:
            raise DataError(f"{path}: images have {x.shape[1]} values, the model expects "
                            f"{self.meta.num_features} ({' x '.join(map(str, self.meta.shape))})")
        if not np.isfinite(x).all():
            raise DataError(f"{path}: images hold NaN or infinite values")
        return x

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Dice and IoU on another dataset's test split (for the gate)."""
        from deepgen.tasks.segmentation import dice_iou, load_pairs

        x, masks = load_pairs(data_dir, "test")
        if x.shape[1] != self.meta.num_features:
            return None
        dice, iou = dice_iou(self.masks_of(self.model, x), masks)
        return {"dice": dice, "iou": iou}


class TextClassifier:
    """An exported BERT classifier with its tokenizer: texts in, labels and probabilities out."""

    def __init__(self, model, tokenizer, meta: ModelMeta):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta

    @classmethod
    def load(cls, directory: str | Path) -> TextClassifier:
        from deepgen.data.tokenizer import WordPieceTokenizer
        from deepgen.models.bert import BertConfig, BertForSequenceClassification

        meta = read_meta(directory)
        model = BertForSequenceClassification(BertConfig(**meta.config), meta.extra["num_labels"])
        return cls(load_weights(directory, model), WordPieceTokenizer.load(directory), meta)

    @property
    def class_names(self) -> list[str]:
        return self.meta.extra["class_names"]

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """(N, num_labels) class probabilities of raw texts."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[i:i + batch_size], self.meta.extra["max_len"])
            ids = torch.from_numpy(enc.input_ids.astype(np.int64))
            mask = torch.from_numpy(enc.attention_mask)
            out.append(self.model(ids, torch.from_numpy(enc.segment_ids.astype(np.int64)), mask).logits
                       .float().softmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """(label names, probability of each predicted label)."""
        probs = self.probabilities(texts)
        best = probs.argmax(1)
        return [self.class_names[i] for i in best], probs[np.arange(len(best)), best]

    @staticmethod
    def read_input(path: str | Path, column: str = "text") -> list[str]:
        """Texts of a file: .txt (one per line), or a CSV/Parquet table's `column`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix in (".csv", ".parquet"):
            from deepgen.data.text import text_column

            return text_column(load_table(str(path)), column, str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}); give a UTF-8 .txt file with one text per "
                            "line, or a .csv/.parquet table") from None
        return [line for line in text.splitlines() if line.strip()]

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Accuracy and F1 on another dataset's test split, if it was tokenized as this model reads text."""
        from deepgen.data.text import read_text_manifest
        from deepgen.tasks.bert import (
            BertClassifierTask,
            attention_mask,
            batches_of,
            classification_metrics,
            read_split,
        )

        manifest = read_text_manifest(data_dir)
        if manifest is None or manifest.tokenizer_fingerprint != self.meta.extra.get("tokenizer_fingerprint") \
                or manifest.class_names != self.class_names:
            return None
        data = read_split(data_dir, "test", BertClassifierTask.batch_columns)
        with torch.no_grad():
            probs = torch.cat([self.model(b["input_ids"], b["segment_ids"], attention_mask(b)).logits
                               .float().softmax(-1) for b in batches_of(data)]).numpy()
        return classification_metrics(data["label"].numpy(), probs, len(self.class_names))


class BertEncoder:
    """An exported pretraining model (encoder + MLM/NSP heads) with its tokenizer; what fine-tuning loads."""

    def __init__(self, directory: Path, meta: ModelMeta):
        self.directory, self.meta = Path(directory), meta

    @classmethod
    def load(cls, directory: str | Path) -> BertEncoder:
        return cls(Path(directory), read_meta(directory))

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """(N, hidden) float32 text embeddings: the mean of the encoder's last-layer states over each text's
        real tokens ([CLS] text [SEP], padding left out), as Sentence-BERT pools."""
        if not hasattr(self, "_model"):
            from deepgen.data.tokenizer import WordPieceTokenizer
            from deepgen.models.bert import BertConfig, BertForPreTraining

            model = BertForPreTraining(BertConfig(**self.meta.config))
            self._model = load_weights(self.directory, model).bert
            self._tokenizer = WordPieceTokenizer.load(self.directory)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self._tokenizer.encode_batch(texts[i:i + batch_size], self.meta.extra["max_len"])
            mask = torch.from_numpy(enc.attention_mask).float()  # (B, T)
            states = self._model(torch.from_numpy(enc.input_ids.astype(np.int64)), None, mask).sequence_output
            out.append(((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).float().numpy())  # (B, C)
        return np.concatenate(out) if out else np.zeros((0, self.meta.config["hidden"]), np.float32)

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Test MLM/NSP metrics on another pretraining dataset with the same tokenizer, else None."""
        from deepgen.data.text import read_text_manifest
        from deepgen.models.bert import BertConfig, BertForPreTraining
        from deepgen.tasks.bert import pretraining_metrics, special_tokens

        manifest = read_text_manifest(data_dir)
        if manifest is None or manifest.tokenizer_fingerprint != self.meta.extra.get("tokenizer_fingerprint") \
                or manifest.task != "pretraining":
            return None
        model = load_weights(self.directory, BertForPreTraining(BertConfig(**self.meta.config)))
        return pretraining_metrics(model, data_dir, special_tokens(manifest), self.meta.extra["mask_rate"])


def loader(family: str):
    """The class that loads an exported folder of `family`."""
    if family == "generator":  # imported here: deepgen.tasks.gan imports this module
        from deepgen.tasks.gan import GeneratorSampler

        return GeneratorSampler
    if family == "image_classifier":  # likewise deepgen.tasks.vit
        from deepgen.tasks.vit import ImageClassifier

        return ImageClassifier
    loaders = {"anomaly": AnomalyScorer, "segmentation": SegmentationPredictor, "text_classifier": TextClassifier,
               "bert_encoder": BertEncoder}
    if family not in loaders:
        raise DataError(f"unknown model family {family!r}; is this deepgen older than the model?")
    return loaders[family]


def load_exported(directory: str | Path):
    """The predictor of an exported model folder, whatever its family."""
    return loader(read_meta(directory).family).load(directory)


def read_rows(path: Path, meta: ModelMeta) -> tuple[np.ndarray, np.ndarray | None]:
    """A file of raw rows (.npy, IDX images, CSV, Parquet) -> (rows scaled as in training, labels or None)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    name = path.name
    if name.endswith(".npy"):
        return _image_rows(read_npy(path), path, meta), None
    if "idx3-ubyte" in name or "idx3_ubyte" in name:
        return _image_rows(read_idx_file(path), path, meta), None
    if path.suffix not in (".csv", ".parquet") and not path.is_dir():
        raise DataError(f"{path}: unknown input format; give a .npy, .csv or .parquet file, or IDX images "
                        "(*-idx3-ubyte)")
    table = load_table(str(path))
    if not table.num_rows:
        raise DataError(f"{path}: no rows; give at least one row")
    if "features" in table.column_names:
        if not pa.types.is_fixed_size_list(table.schema.field("features").type):
            raise DataError(f"{path}: column 'features' is {table.schema.field('features').type}, expected a "
                            "fixed-size list of numbers (as `deepgen prepare` writes)")
        x = features_to_numpy(table.column("features"))
        labels = table.column("label").to_numpy(zero_copy_only=False) if "label" in table.column_names else None
        if (table.schema.metadata or {}).get(b"deepgen.prepared") != b"1":
            return meta.scaler.apply(x), labels
        # a prepared split: scaled for its own dataset, whose range may not be the model's
        from deepgen.data.prepare import read_manifest

        manifest = read_manifest(path.parent)
        if manifest is None:
            raise DataError(f"{path}: a prepared split without its manifest.json beside it, so its scaling is "
                            "unknown; score the raw rows instead (.npy, CSV/Parquet columns, IDX)")
        return meta.scaler.rescale(x, scaled_by=manifest.scaler), labels
    return table_rows(table, meta, str(path)), None


def read_npy(path: Path) -> np.ndarray:
    """A .npy array of numbers, or a DataError naming the file."""
    x = load_npy(path)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: an array of {x.dtype}, expected numbers")
    return x


def _image_rows(x: np.ndarray, path: Path, meta: ModelMeta) -> np.ndarray:
    if x.ndim == 0:
        raise DataError(f"{path}: a single value, expected an array of rows (N, ...)")
    if not len(x):
        raise DataError(f"{path}: no rows (shape {x.shape}); give at least one row")
    return meta.scaler.apply(x.reshape(len(x), -1))


def table_rows(table, meta: ModelMeta, where: str) -> np.ndarray:
    """A table's raw feature columns, picked by the names the model was trained on (any order, extra
    columns ignored), scaled as in training."""
    if not meta.feature_names:
        raise DataError(f"{where}: this model scores image rows; give a .npy, an IDX images file, "
                        "or a Parquet file with a `features` column")
    missing = [c for c in meta.feature_names if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing feature column {missing[0]!r} that the model was trained on")
    return meta.scaler.apply(table_features(table, meta.feature_names, where))
