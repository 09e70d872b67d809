"""MLflow models-from-code entry: `mlflow.pyfunc.load_model` runs this file instead of unpickling.

The exported folder says its family; predict() follows it:
  anomaly          DataFrame with a `features` column of scaled rows, a table model's raw columns (by
                   name), or a 2-D array of raw rows
                   -> DataFrame(score, is_anomaly) at the threshold stored with the model
  text_classifier  DataFrame with a `text` column, or a list of strings -> DataFrame(label, probability)
  segmentation     2-D array of scaled image rows -> DataFrame(mask) of flattened binary masks
  image_classifier DataFrame with a `features` column of scaled rows, or an array of raw images
                   -> DataFrame(label, probability)
"""

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa

from deepgen.anomaly import flag
from deepgen.export import table_rows


class DeepgenModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from deepgen.export import load_exported, read_meta

        self.family = read_meta(context.artifacts["model_dir"]).family
        self.predictor = load_exported(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        if self.family == "anomaly":
            scorer = self.predictor
            if isinstance(model_input, pd.DataFrame) and "features" in model_input.columns:
                x = np.stack(model_input["features"].to_numpy()).astype(np.float32)
            elif isinstance(model_input, pd.DataFrame) and scorer.meta.feature_names:  # columns by name
                x = table_rows(pa.Table.from_pandas(model_input, preserve_index=False), scorer.meta, "model input")
            else:
                raw = np.asarray(model_input, dtype=np.float32)
                x = scorer.meta.scaler.apply(raw.reshape(len(raw), -1))
            scores = scorer.score(x)
            return pd.DataFrame({"score": scores, "is_anomaly": flag(scores, scorer.threshold)})
        if self.family == "text_classifier":
            texts = model_input["text"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
            labels, probs = self.predictor.predict([str(t) for t in texts])
            return pd.DataFrame({"label": labels, "probability": probs})
        if self.family == "segmentation":
            masks = self.predictor.masks_of(self.predictor.model, np.asarray(model_input, dtype=np.float32))
            return pd.DataFrame({"mask": list(masks.astype(np.uint8))})
        if self.family == "image_classifier":
            if isinstance(model_input, pd.DataFrame) and "features" in model_input.columns:
                x = np.stack(model_input["features"].to_numpy()).astype(np.float32)
            else:
                raw = np.asarray(model_input, dtype=np.float32)
                x = self.predictor.meta.scaler.apply(raw.reshape(len(raw), -1))
            labels, probs = self.predictor.predict(x)
            return pd.DataFrame({"label": labels, "probability": probs})
        raise TypeError(f"a {self.family} model has no pyfunc predict; use its deepgen command")


mlflow.models.set_model(DeepgenModel())
