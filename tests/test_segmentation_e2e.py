"""The segmentation pipeline end to end: shapes -> Parquet -> Ray Train (2 workers) -> registry -> predict."""

import os
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from deepgen import cli
from deepgen.data.shapes import make_shapes
from deepgen.tasks.segmentation import dice_iou

pytestmark = pytest.mark.ray


def test_segmentation_pipeline_registers_a_unet_and_predicts_masks(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = ["data.source.num_images=240", "data.source.size=16", "model.base_channels=4", "model.depth=2",
            "train.epochs=3", "tracking.runs_dir=runs"]
    pipeline = os.path.join(os.path.dirname(__file__), "..", "pipelines", "segmentation_shapes.yaml")
    args = [a for s in sets for a in ("--set", s)]
    assert cli.main(["run", pipeline, *args]) == 0

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    v = MlflowClient(uri, uri).get_model_version_by_alias("segmentation-shapes", "champion")
    assert {"test_dice", "test_iou", "test_baseline_dice"} <= set(v.tags)
    assert 0 < float(v.tags["test_dice"]) <= 1

    x, masks = make_shapes(6, 16, seed=77)
    np.save(tmp_path / "images.npy", x)
    out = subprocess.run([sys.executable, "-m", "deepgen.cli", "predict", "--model", "segmentation-shapes@champion",
                          "--input", str(tmp_path / "images.npy"), "--output", str(tmp_path / "masks.npy")],
                         capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stderr
    pred = np.load(tmp_path / "masks.npy")
    assert pred.shape == (6, 16, 16) and set(np.unique(pred)) <= {0, 1}
    assert dice_iou(pred, masks[:, 0])[0] > 0.3  # three tiny epochs: well above an empty mask's 0
