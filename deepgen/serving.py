"""What a registered model answers when served (`mlflow models serve`, `mlflow.pyfunc`): every family's
predictor is a `Predictor` and says its own answer, the input example logged with it, and its MLflow signature.

  family           input                                             output
  anomaly          raw rows (N, D) (images), or a table's feature    DataFrame(score, is_anomaly) at the
                   columns by name (any order, extra ones ignored)   threshold registered with the model
  segmentation     raw image rows (N, C*H*W)                          masks (N, H, W) uint8 in {0, 1}
  text_classifier  DataFrame(text)                                    DataFrame(label, probability)
  image_classifier raw image rows (N, C*H*W)                          DataFrame(label, probability)
  bert_encoder     DataFrame(text)                                    (N, hidden) embeddings: mean of the last
                                                                      layer over each text's tokens
  generator        DataFrame(seed[, label]): one image per row        (N, C, H, W) images in [0, 1]
  generator/srgan  low-resolution images (N, C, h, w) in [0, 1]       (N, C, s*h, s*w) in [0, 1]

Raw rows are scaled as in training (the scaler is in the model), so the answer is `deepgen score`'s,
`deepgen predict`'s, `deepgen sample`'s and `deepgen upscale`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class Predictor:
    """An exported model folder loaded into memory (deepgen.export holds the folder format; each family's
    module under deepgen/tasks/ holds its predictor)."""

    meta: Any  # deepgen.export.ModelMeta

    @classmethod
    def load(cls, directory: str | Path) -> Predictor:
        raise NotImplementedError

    def answer(self, model_input) -> pd.DataFrame | np.ndarray:
        """The served answer to `model_input` (the table in the module docstring)."""
        raise TypeError(f"a {self.meta.family} model has no served answer")

    def example_input(self) -> Any:
        """Two rows a served model answers, logged beside it (MLflow's input example)."""
        raise TypeError(f"a {self.meta.family} model has no served answer")

    def signature(self, example):
        """The model's MLflow signature, from its example and its answer to it."""
        from mlflow.models import infer_signature

        return infer_signature(example, self.answer(example))

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """The gate's metrics on another dataset's test split, or None where they are not comparable."""
        return None

    def predict_command(self, args, version) -> int:
        """`deepgen predict --model NAME@ALIAS ...` with this model (`args`: the command's flags; `version`: the
        registered version): read the input, write or print the answer, return the exit code. A family
        whose models label or segment inputs says how; the others have no `deepgen predict`."""
        from deepgen.errors import DeepgenError

        raise DeepgenError(f"{args.model}: a {self.meta.family} model has no `deepgen predict`; it runs "
                           "classifiers and segmentation models (`deepgen score` scores with an anomaly "
                           "detector, `deepgen sample` draws from a generator)")


def load_exported(directory: str | Path) -> Predictor:
    """The predictor of an exported model folder, whatever its family (deepgen.tasks.registry)."""
    from deepgen.export import read_meta
    from deepgen.tasks.registry import predictor_class

    meta = read_meta(directory)
    return predictor_class(meta.kind, meta.family).load(directory)


def input_rows(model_input) -> np.ndarray:
    """Served raw rows or images -> (N, D) float32."""
    raw = np.asarray(model_input, dtype=np.float32)
    return raw.reshape(len(raw), -1)


def input_texts(model_input) -> list[str]:
    """A served DataFrame's `text` column (or a list of texts) -> texts."""
    values = model_input["text"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
    return [str(t) for t in values]


def example_rows(meta) -> np.ndarray:
    """Two raw rows of the model's shape (float64, as the signature requires), mid-range once scaled."""
    return meta.scaler.invert(np.full((2, meta.num_features), 0.5, np.float32)).astype(np.float64)
