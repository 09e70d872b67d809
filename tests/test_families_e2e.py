"""The BERT and GAN families through the real pipeline: prepare -> Ray Train -> evaluate -> registry -> the
command a user runs next (`predict --text`, `sample`). Tiny configs; one TorchTrainer per pipeline run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from deepgen import cli

pytestmark = pytest.mark.ray


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'deepgen-runs' / 'mlflow.db'}"
    return tmp_path, uri, {**os.environ, "MLFLOW_TRACKING_URI": uri}


def _sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def test_bert_pretrain_then_fine_tune_from_the_champion_then_predict(ray_local, workdir):
    root, uri, env = workdir
    rng = np.random.default_rng(0)
    topics = [["cat", "dog", "bird", "fish"], ["red", "blue", "green", "pink"]]
    docs = ["\n".join(" ".join(rng.choice(topics[d % 2], 4)) + "." for _ in range(4)) for d in range(60)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    labels = np.arange(120) % 2
    pd.DataFrame({"text": [f"a {rng.choice(topics[y])} here" for y in labels],
                  "label": np.array(["animal", "colour"])[labels]}).to_csv(root / "labelled.csv", index=False)
    small = ("model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64", "scaling.num_workers=1",
             "train.epochs=2", "data.text.max_len=16")
    pipelines = os.path.join(os.path.dirname(__file__), "..", "pipelines")
    assert cli.main(["run", f"{pipelines}/bert_pretrain.yaml", *_sets(
        *small, f"data.source.paths=[{root / 'corpus.txt'}]", "data.text.vocab_size=60",
        "data.text.min_frequency=1")]) == 0
    assert cli.main(["run", f"{pipelines}/bert_sentiment.yaml", *_sets(
        *small, f"data.source.path={root / 'labelled.csv'}")]) == 0

    c = MlflowClient(uri, uri)
    encoder = c.get_model_version_by_alias("bert-wordnet", "champion")
    assert {"test_mlm_loss", "test_mlm_accuracy", "test_nsp_accuracy"} <= set(encoder.tags)
    classifier = c.get_model_version_by_alias("bert-sentiment", "champion")
    assert classifier.tags["initialisation"] == "pretrained"
    assert classifier.tags["pretrained"] == f"bert-wordnet-v{encoder.version}"
    assert {"test_accuracy", "test_f1"} <= set(classifier.tags)

    out = subprocess.run([sys.executable, "-m", "deepgen.cli", "predict", "--model", "bert-sentiment@champion",
                          "--text", "a dog here", "--text", "a blue here", "--json"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert len(rows) == 2 and all(r["label"] in ("animal", "colour") and 0.5 <= r["probability"] <= 1 for r in rows)


def test_conditional_gan_pipeline_registers_a_generator_that_samples_a_label(ray_local, workdir):
    root, uri, env = workdir
    pipeline = os.path.join(os.path.dirname(__file__), "..", "pipelines", "gan_conditional.yaml")
    small = ["data.resize=null", "model.nz=16", "model.ngf=8", "model.ndf=8", "train.epochs=1",
             "scaling.num_workers=1"]
    assert cli.main(["run", pipeline, *_sets(*small)]) == 0
    v = MlflowClient(uri, uri).get_model_version_by_alias("gan-cgan-digits", "champion")
    assert {"test_frechet_distance", "test_conditional_accuracy"} <= set(v.tags)
    assert float(v.tags["test_frechet_distance"]) > 0
    assert float(v.tags["test_classifier_test_accuracy"]) > 0.8  # the features that judge G are a good classifier's

    # The judge was trained once, in its own Ray task before the workers started (not on rank 0 while the
    # other ranks wait), and cached with the prepared data: preparing again finds it and starts no task.
    from ray.util.state import list_tasks

    from deepgen import config, orchestrate

    def judge_tasks():  # this test's Ray, by its address (another test process may run its own)
        return [t.state for t in list_tasks(address=ray_local.get_runtime_context().gcs_address,
                                            filters=[("name", "=", orchestrate.DATA_AID_TASK)], limit=1000)]

    assert judge_tasks() == ["FINISHED"]
    spec = config.PipelineSpec.from_yaml(pipeline, overrides=small)
    assert list((spec.data_dir / "judge").glob("judge-*.pt"))
    orchestrate.prepare(spec)
    assert judge_tasks() == ["FINISHED"]

    out = subprocess.run([sys.executable, "-m", "deepgen.cli", "sample", "--model", "gan-cgan-digits@champion",
                          "--n", "16", "--label", "3", "--out", str(root / "threes.png")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    import matplotlib.image

    grid = matplotlib.image.imread(root / "threes.png")
    assert grid.shape[:2] == (2 * 8, 8 * 8)  # 16 digits of 8x8, 8 per row
