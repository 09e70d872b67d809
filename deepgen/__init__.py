"""deepgen: train, tune and ship deep generative and representation models with Ray and MLflow."""

__version__ = "0.1.0"
