"""The image classifiers' family: a ViT trained on labelled images.

vit_classifier: minimise the cross-entropy of the ViT's logits on the integer labels 0..K-1; judged by
accuracy and macro F1 on the test split, with a confusion matrix logged to MLflow; exported as an
`image_classifier` folder that `deepgen predict --input IMAGES` and the pyfunc read. (The masked
autoencoder, a ViT too, is an anomaly detector: deepgen.tasks.autoencoder.)
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from deepgen.config import PipelineSpec
from deepgen.data.dataset import load_split
from deepgen.data.manifest import Manifest
from deepgen.errors import DataError, DeepgenError
from deepgen.export import ModelMeta, image_config, load_weights, read_images, read_meta, save_model_dir
from deepgen.files import check_output, writing_output
from deepgen.models.vit import ViTClassifier, ViTClassifierConfig, as_images, random_shift
from deepgen.serving import Predictor, example_rows, input_rows
from deepgen.tasks import Evaluation, unwrap
from deepgen.train.optim import ScheduledTask


def vit_config(config_cls, spec_model, shape: list[int], **extra):
    """The model config dataclass from the spec fields it shares by name, with a one-line error naming the
    field when the image does not fit the patches."""
    if len(shape) != 3:
        raise DataError(f"model.kind {spec_model.kind} needs images (C, H, W); the data has rows of shape {shape}")
    shared = type(spec_model).model_fields
    values = {f.name: getattr(spec_model, f.name) for f in fields(config_cls) if f.name in shared}
    try:
        return config_cls(input_shape=tuple(shape), **values, **extra)
    except ValueError as e:
        raise DataError(f"model.patch_size: {e} (data.resize changes the side)") from None


# --- classification --------------------------------------------------------------------------------


def num_classes_of(spec: PipelineSpec, manifest: Manifest) -> int:
    """K: the largest training label + 1, read from the prepared train split's label column (the task is
    built where the prepared data is: the driver, or workers on the same machine or shared storage)."""

    from deepgen.data.dataset import split_labels

    if manifest.label_type != "int":
        raise DataError(f"{spec.name}: model.kind vit_classifier needs integer labels 0..K-1; the data's labels are "
                        f"{manifest.label_type or 'missing'}")
    labels = split_labels(spec.data_dir, "train")
    if labels.min() < 0:
        raise DataError(f"{spec.name}: vit_classifier labels must be 0..K-1; the train split holds {labels.min()}")
    return int(labels.max()) + 1


class ViTClassifierTask(ScheduledTask):
    batch_columns = ("features", "label")

    def __init__(self, spec: PipelineSpec, manifest: Manifest):
        self.spec, self.manifest = spec, manifest
        self.num_classes = num_classes_of(spec, manifest)
        self.config = vit_config(ViTClassifierConfig, spec.model, manifest.shape, num_classes=self.num_classes)

    def build_models(self):
        return {"model": ViTClassifier(self.config)}

    def build_optimizers(self, models):
        t = self.spec.train
        return {"model": torch.optim.AdamW(models["model"].parameters(), lr=t.lr, weight_decay=t.weight_decay)}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # minimise -log p(y | x), the targets smoothed by model.label_smoothing
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.spec.model.label_smoothing)

    def train_step(self, models, optimizers, batch):
        model, y = models["model"], batch["label"].long()
        x = random_shift(as_images(batch["features"], self.config.input_shape), self.spec.model.augment_shift)
        logits = self.update(models, optimizers, lambda: model(x),
                             loss_of=lambda logits: self.loss(logits, y))
        return {"loss": self.loss(logits, y).detach(), "accuracy": (logits.argmax(1) == y).float().mean().detach()}

    def eval_step(self, models, batch):
        y = batch["label"].long()
        logits = models["model"](batch["features"])
        return {"loss": F.cross_entropy(logits.float(), y, reduction="sum"),
                "accuracy": (logits.argmax(1) == y).float().sum()}

    def evaluate(self, models, data_dir: Path) -> Evaluation:
        from deepgen import plots
        from deepgen.tasks.bert import classification_metrics

        model = unwrap(models["model"]).eval()
        x, y = load_split(data_dir, "test")
        probs = ImageClassifier.probabilities_of(model, x)
        metrics = classification_metrics(y.astype(np.int64), probs, self.num_classes)
        names = [str(k) for k in range(self.num_classes)]
        figures = {"confusion_matrix": plots.confusion_matrix(y.astype(np.int64), probs.argmax(1), names)}
        return Evaluation(metrics, registry_tags={"num_classes": self.num_classes}, figures=figures)

    def export(self, dest: Path, models, evaluation: Evaluation) -> Path:
        return save_model_dir(dest, "image_classifier", self.spec.model, self.manifest, unwrap(models["model"]),
                              {"num_classes": self.num_classes})


class ImageClassifier(Predictor):
    """An exported ViT classifier: image rows in, labels and probabilities out."""

    def __init__(self, model: ViTClassifier, meta: ModelMeta):
        self.model, self.meta = model.eval(), meta

    @classmethod
    def load(cls, directory: str | Path) -> ImageClassifier:
        meta = read_meta(directory)
        return cls(load_weights(directory, ViTClassifier(image_config(meta, ViTClassifierConfig))), meta)

    @staticmethod
    @torch.no_grad()
    def probabilities_of(model: ViTClassifier, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Scaled image rows (N, C*H*W) -> class probabilities (N, K)."""
        model.eval()
        out = [model(torch.tensor(x[i:i + batch_size], dtype=torch.float32)).float().softmax(-1).numpy()
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, model.config.num_classes), np.float32)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled image rows -> (labels (N,) int64, probability of each label (N,))."""
        probs = self.probabilities_of(self.model, x)
        best = probs.argmax(1)
        return best.astype(np.int64), probs[np.arange(len(best)), best]

    def read_input(self, path: str | Path) -> np.ndarray:
        return read_images(path, self.meta)

    def predict_command(self, args, version) -> int:
        """Label and probability per image of --input: printed (or JSON lines), or written to --output Parquet."""
        if not args.input:
            raise DeepgenError(f"{args.model}: an image classifier needs --input IMAGES (.npy, IDX, .parquet)")
        if args.output:
            if Path(args.output).suffix != ".parquet":
                raise DeepgenError(f"{args.output}: labels are written as Parquet; give --output FILE.parquet")
            check_output(Path(args.output), Path(args.input), force=args.force)
        labels, probs = self.predict(self.read_input(args.input))
        if args.output:
            import pyarrow as pa
            import pyarrow.parquet as pq

            with writing_output(Path(args.output)) as tmp:
                pq.write_table(pa.table({"row": np.arange(len(labels)), "label": labels,
                                         "probability": probs.astype(float)}), tmp)
            print(f"labelled {len(labels)} images with {version.name} v{version.version} -> {args.output}")
            return 0
        for i, (label, p) in enumerate(zip(labels.tolist(), probs.tolist())):
            print(json.dumps({"row": i, "label": label, "probability": round(p, 4)}) if args.json
                  else f"{i:6d}  {label:4d}  {p:.3f}")
        return 0

    def answer(self, model_input) -> pd.DataFrame:
        labels, probs = self.predict(self.meta.scaler.apply(input_rows(model_input)))
        return pd.DataFrame({"label": labels, "probability": np.asarray(probs, np.float64)})

    def example_input(self) -> np.ndarray:
        return example_rows(self.meta)

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Accuracy and macro F1 on another dataset's test split of the same image shape (for the gate)."""
        from deepgen.data.manifest import read_manifest
        from deepgen.tasks.bert import classification_metrics

        x, y = load_split(data_dir, "test")
        if x.shape[1] != self.meta.num_features or y is None or y.dtype.kind not in "iu":
            return None
        x = self.meta.scaler.rescale(x, scaled_by=read_manifest(data_dir).scaler)
        k = self.model.config.num_classes
        if y.min() < 0 or y.max() >= k:
            return None
        return classification_metrics(y.astype(np.int64), self.probabilities_of(self.model, x), k)


TASKS = {"vit_classifier": ViTClassifierTask}
PREDICTORS = {"image_classifier": ImageClassifier}


def next_command(kind: str, name: str) -> str:
    return f"deepgen predict --model {name}@champion --input images.npy [--output labels.parquet]"
