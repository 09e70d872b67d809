"""MLflow models-from-code entry: `mlflow.pyfunc.load_model` runs this file instead of unpickling.

The exported folder says its kind; the registry (deepgen.tasks.registry) finds its family's predictor, whose
answer is the table in `deepgen.serving` (scores and flags, masks, labels and probabilities, embeddings,
generated or super-resolved images).
"""

import mlflow


class DeepgenModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from deepgen.serving import load_exported

        self.predictor = load_exported(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        return self.predictor.answer(model_input)


mlflow.models.set_model(DeepgenModel())
