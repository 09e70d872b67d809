"""MLflow models-from-code entry: `mlflow.pyfunc.load_model` runs this file instead of unpickling.

The exported folder says its family; predict() answers as `deepgen.serving` describes (scores and flags,
masks, labels and probabilities, embeddings, generated or super-resolved images).
"""

import mlflow


class DeepgenModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from deepgen.export import load_exported, read_meta

        self.family = read_meta(context.artifacts["model_dir"]).family
        self.predictor = load_exported(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        from deepgen.serving import answer

        return answer(self.family, self.predictor, model_input)


mlflow.models.set_model(DeepgenModel())
