"""The ViT classifier and the masked autoencoder through the real pipeline: prepare -> Ray Train -> evaluate ->
registry -> the command a user runs next (`deepgen predict --input`, `deepgen score`) and the pyfunc.
Tiny configs on generated bar images; one TorchTrainer per pipeline run."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import bars_source, write_pipeline
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from deepgen import cli
from deepgen.config import PipelineSpec
from deepgen.data.dataset import load_split

pytestmark = pytest.mark.ray
SMALL_VIT = {"patch_size": 2, "hidden": 16, "layers": 1, "heads": 2}


def _run(root, monkeypatch, **sections):
    spec = write_pipeline(root / "p.yaml", data={"source": bars_source(root, 300, seed=3)},
                          scaling={"num_workers": 1}, **sections)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    assert cli.main(["run", str(spec)]) == 0
    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
    x, y = load_split(PipelineSpec.from_yaml(spec).data_dir, "test")
    np.save(root / "test.npy", np.rint(x * 255).astype(np.uint8).reshape(-1, 8, 8))  # the raw test images
    return uri, MlflowClient(uri, uri), x, y, {**os.environ, "MLFLOW_TRACKING_URI": uri}


def test_registered_mae_scores_through_deepgen_score_and_the_pyfunc_as_evaluation_did(ray_local, tmp_path,
                                                                                         monkeypatch):
    uri, client, x, y, env = _run(
        tmp_path, monkeypatch, name="mae",
        model={"kind": "mae", **SMALL_VIT, "decoder_hidden": 8, "decoder_heads": 2, "eval_masks": 3},
        train={"epochs": 2, "batch_size": 32, "lr": 0.003},
        anomaly={"normal_labels": [0], "threshold": {"method": "fpr", "target_fpr": 0.05}},
        registry={"model_name": "mae-bars"})
    version = client.get_model_version_by_alias("mae-bars", "champion")
    assert version.tags["score"] == "reconstruction" and version.tags["threshold_method"] == "fpr"
    assert {"test_roc_auc", "test_pr_auc", "test_f1", "threshold", "kept_epoch"} <= set(version.tags)
    out = tmp_path / "scores.parquet"
    subprocess.run([sys.executable, "-m", "deepgen.cli", "score", "--model", "mae-bars@champion",
                    "--input", str(tmp_path / "test.npy"), "--output", str(out)], env=env, check=True,
                   capture_output=True, text=True)
    table = pq.read_table(out).to_pydict()
    scores = np.array(table["score"])
    assert roc_auc_score(y != 0, scores) == pytest.approx(float(version.tags["test_roc_auc"]), abs=1e-12)
    assert np.array_equal(np.array(table["is_anomaly"]), scores > float(version.tags["threshold"]))
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model("models:/mae-bars@champion").predict(np.rint(x * 255).astype(np.float64))
    np.testing.assert_allclose(served["score"].to_numpy(), scores, rtol=1e-6)


def test_vit_classifier_registers_accuracy_and_predicts_labels_of_images(ray_local, tmp_path, monkeypatch):
    uri, client, x, y, env = _run(
        tmp_path, monkeypatch, name="vit", anomaly={},
        model={"kind": "vit_classifier", **SMALL_VIT}, train={"epochs": 3, "batch_size": 32, "lr": 0.003},
        registry={"model_name": "vit-bars", "gate_metric": "accuracy"})
    version = client.get_model_version_by_alias("vit-bars", "champion")
    assert {"test_accuracy", "test_f1", "num_classes"} <= set(version.tags)
    artifacts = [a.path for a in client.list_artifacts(version.run_id, "plots")]
    assert "plots/confusion_matrix.png" in artifacts
    out = tmp_path / "labels.parquet"
    subprocess.run([sys.executable, "-m", "deepgen.cli", "predict", "--model", "vit-bars@champion",
                    "--input", str(tmp_path / "test.npy"), "--output", str(out)], env=env, check=True,
                   capture_output=True, text=True)
    labels = np.array(pq.read_table(out).column("label").to_pylist())
    assert len(labels) == len(y) and set(labels) <= {0, 1}
    assert (labels == y).mean() == pytest.approx(float(version.tags["test_accuracy"]), abs=1e-12)
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model("models:/vit-bars@champion").predict(np.rint(x * 255).astype(np.float64))
    assert np.array_equal(served["label"].to_numpy(), labels)
    # the wrong image size is one line naming the file
    np.save(tmp_path / "big.npy", np.zeros((2, 16, 16), np.uint8))
    bad = subprocess.run([sys.executable, "-m", "deepgen.cli", "predict", "--model", "vit-bars@champion",
                          "--input", str(tmp_path / "big.npy")], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("deepgen: error:") and "big.npy" in bad.stderr
