"""MLflow models-from-code entry: `mlflow.pyfunc.load_model` runs this file instead of unpickling.

predict(DataFrame with a `features` column of scaled rows, or a 2-D array of raw rows) ->
DataFrame(score, is_anomaly), using the threshold stored with the model.
"""

import mlflow
import numpy as np
import pandas as pd


class DeepgenAnomalyModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from deepgen.export import AnomalyScorer

        self.scorer = AnomalyScorer.load(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, pd.DataFrame) and "features" in model_input.columns:
            x = np.stack(model_input["features"].to_numpy()).astype(np.float32)
        else:
            raw = np.asarray(model_input, dtype=np.float32)
            x = self.scorer.meta.scaler.apply(raw.reshape(len(raw), -1))
        scores = self.scorer.score(x)
        return pd.DataFrame({"score": scores, "is_anomaly": scores > self.scorer.threshold})


mlflow.models.set_model(DeepgenAnomalyModel())
