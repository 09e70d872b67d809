"""What a registered model answers when served (`mlflow models serve`, `mlflow.pyfunc`): one `answer` per
family, the input example logged with it, and its MLflow signature.

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

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa


def answer(family: str, predictor, model_input) -> pd.DataFrame | np.ndarray:
    if family == "anomaly":
        return _anomaly(predictor, model_input)
    if family == "segmentation":
        return predictor.predict(predictor.meta.scaler.apply(_rows(model_input)))  # (N, H, W) uint8
    if family == "text_classifier":
        labels, probs = predictor.predict(_texts(model_input))
        return pd.DataFrame({"label": labels, "probability": probs.astype(np.float64)})
    if family == "image_classifier":
        labels, probs = predictor.predict(predictor.meta.scaler.apply(_rows(model_input)))
        return pd.DataFrame({"label": labels, "probability": np.asarray(probs, np.float64)})
    if family == "bert_encoder":
        return predictor.embed(_texts(model_input))
    if family == "generator" and predictor.meta.kind == "srgan":
        return predictor.upscale(np.asarray(model_input, dtype=np.float32))
    if family == "generator":
        return _generated(predictor, model_input)
    raise TypeError(f"a {family} model has no served answer")


def _rows(model_input) -> np.ndarray:
    raw = np.asarray(model_input, dtype=np.float32)
    return raw.reshape(len(raw), -1)


def _texts(model_input) -> list[str]:
    texts = model_input["text"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
    return [str(t) for t in texts]


def _anomaly(scorer, model_input) -> pd.DataFrame:
    from deepgen.anomaly import flag
    from deepgen.export import table_rows

    if isinstance(model_input, pd.DataFrame) and "features" in model_input.columns:  # prepared, scaled rows
        x = np.stack(model_input["features"].to_numpy()).astype(np.float32)
    elif isinstance(model_input, pd.DataFrame) and scorer.meta.feature_names:  # a table's columns, by name
        x = table_rows(pa.Table.from_pandas(model_input, preserve_index=False), scorer.meta, "model input")
    else:
        x = scorer.meta.scaler.apply(_rows(model_input))
    scores = scorer.score(x)
    return pd.DataFrame({"score": scores, "is_anomaly": flag(scores, scorer.threshold)})


def _generated(sampler, model_input) -> np.ndarray:
    """One image per row, from the noise its `seed` draws (and its `label`, for a conditional generator)."""
    import torch

    from deepgen.tasks.gan import generate

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    num_classes = getattr(sampler.generator.config, "num_classes", 0)
    if num_classes and "label" not in frame.columns:
        raise ValueError(f"a conditional generator needs a `label` column (0..{num_classes - 1}) beside `seed`")
    images = []
    for i, seed in enumerate(frame["seed"].astype(int)):
        label = torch.tensor([int(frame["label"].iloc[i])]) if num_classes else None
        if label is not None and not 0 <= int(label) < num_classes:
            raise ValueError(f"label {int(label)}: this generator draws labels 0..{num_classes - 1}")
        images.append(generate(sampler.generator, 1, label, seed=seed).numpy())
    c, h, w = sampler.meta.shape
    return np.concatenate(images).astype(np.float32) if images else np.zeros((0, c, h, w), np.float32)


def example_input(family: str, predictor) -> Any:
    """Two rows a served model answers, logged beside it (MLflow's input example)."""
    meta = predictor.meta
    if family in ("anomaly", "segmentation", "image_classifier"):
        raw = meta.scaler.invert(np.full((2, meta.num_features), 0.5, np.float32)).astype(np.float64)
        if family == "anomaly" and meta.feature_names:
            return pd.DataFrame(raw, columns=meta.feature_names)
        return raw
    if family in ("text_classifier", "bert_encoder"):
        return pd.DataFrame({"text": ["a short example text", "another one"]})
    if family == "generator" and meta.kind == "srgan":
        c, h, w = meta.shape
        s = int(meta.config["scale"])
        return np.full((2, c, max(h // s, 1), max(w // s, 1)), 0.5)
    if family == "generator":
        frame = pd.DataFrame({"seed": np.array([0, 1], np.int64)})
        if getattr(predictor.generator.config, "num_classes", 0):
            frame["label"] = np.array([0, 1], np.int64) % predictor.generator.config.num_classes
        return frame
    raise TypeError(f"a {family} model has no served answer")


def signature(family: str, predictor, example):
    """The model's MLflow signature, from its example and its answer to it; image sizes an SRGAN takes are free."""
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    output = answer(family, predictor, example)
    if family == "generator" and predictor.meta.kind == "srgan":
        c = predictor.meta.shape[0]
        return ModelSignature(Schema([TensorSpec(np.dtype(np.float64), (-1, c, -1, -1))]),
                              Schema([TensorSpec(np.dtype(np.float32), (-1, c, -1, -1))]))
    return infer_signature(example, output)
