"""End to end on generated data: 2 Ray Train workers (gloo), a temporary SQLite MLflow store, the registry,
then lookup and scoring from a fresh process. One pipeline run serves most of the module (Ray is costly);
the kill-and-resume test (slow: a second Ray and a second run) has its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import bar_images, bars_source, write_pipeline
from mlflow.tracking import MlflowClient

from deepgen import cli

pytestmark = pytest.mark.ray
MODEL = "e2e-bars"
EPOCHS = 6  # enough that a kill after epoch 1 lands before the last
ROOT = Path(__file__).resolve().parents[1]


def _write_spec(root: Path) -> Path:
    return write_pipeline(
        root / "bars.yaml", name="bars", data={"source": bars_source(root, 600, seed=7)},
        model={"kind": "dense_autoencoder", "hidden": [32], "latent_dim": 4, "loss": "bce"},
        train={"epochs": EPOCHS, "batch_size": 32, "lr": 0.01, "run_name": "bars-e2e"},
        scaling={"num_workers": 2},
        # a score with fitted statistics: what the registered model must carry to score as evaluation did
        anomaly={"normal_labels": [0], "threshold": {"method": "fpr", "target_fpr": 0.05}, "score": "standardized"},
        registry={"model_name": MODEL},
    )


def _run(root: Path, spec: Path) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        between = time.time() * 1000
        assert cli.main(["run", str(spec)]) == 0
    return {"root": root, "spec": spec, "between": between, "uri": f"sqlite:///{root / 'runs' / 'mlflow.db'}",
            "runs_dir": str(root / "runs")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_local):
    """The whole pipeline, run once for the module's tests."""
    root = tmp_path_factory.mktemp("e2e")
    return _run(root, _write_spec(root))


def _train_until_epoch_1_then_kill(root, spec) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    log = root / "train.log"
    proc = subprocess.Popen([sys.executable, "-m", "deepgen.cli", "train", str(spec)], cwd=root, env=env,
                            start_new_session=True, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    snapshot = root / "runs" / "ray" / "bars-e2e" / "checkpoint_manager_snapshot.json"
    try:  # killed once Ray Train has recorded a checkpoint (what a resume starts from): the worker's "epoch
        # 1/6" line comes earlier, and on a loaded machine a kill then leaves nothing to resume
        deadline = time.monotonic() + 300
        while not _recorded(snapshot):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(60)


def _recorded(snapshot: Path) -> bool:
    try:
        return bool(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
        return False


def _client(p) -> MlflowClient:
    return MlflowClient(tracking_uri=p["uri"], registry_uri=p["uri"])


@pytest.mark.slow
def test_rerun_with_the_same_run_name_resumed_without_duplicating_history(ray_local, tmp_path):
    # 1) `deepgen train` killed (with its own Ray) once Ray Train has recorded a checkpoint, 2) the whole
    # pipeline under the same run name and spec: it must resume, not restart (another spec is refused)
    spec = _write_spec(tmp_path)
    _train_until_epoch_1_then_kill(tmp_path, spec)
    pipeline = _run(tmp_path, spec)
    c = _client(pipeline)
    [run] = c.search_runs([c.get_experiment_by_name("bars").experiment_id])
    history = c.get_metric_history(run.info.run_id, "train_loss")
    epochs = list(range(1, EPOCHS + 1))
    assert sorted(m.step for m in history) == epochs  # each once, also an epoch checkpointed but not logged
    # the final checkpoint's history: the first epochs ended before the second command started
    final = _recorded_checkpoints(pipeline)[-1]
    ended = {h["epoch"]: h["ended_at"] * 1000 for h in json.loads((final / "history.json").read_text())}
    first = sorted(e for e, t in ended.items() if t < pipeline["between"])
    assert sorted(ended) == epochs and first == epochs[:len(first)] and 1 <= len(first) < EPOCHS


def test_a_run_logs_its_evaluation_plots(pipeline):
    c = _client(pipeline)
    [run] = c.search_runs([c.get_experiment_by_name("bars").experiment_id])
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/score_histogram.png", "plots/roc_curve.png", "plots/pr_curve.png",
            "plots/reconstructions.png"} <= artifacts
    assert "plots/loss_curves.png" not in artifacts  # MLflow charts train_loss and val_loss itself


def _recorded_checkpoints(p) -> list[Path]:
    """The checkpoints Ray Train recorded for the run (its checkpoint manager's snapshot), oldest first. The
    driver killed mid-run can leave a half-copied `checkpoint_*` folder that Ray never recorded and never
    resumes from; what a resume or a user's `Result.from_path` sees is the recorded ones."""
    import ray.train

    result = ray.train.Result.from_path(str(p["root"] / "runs" / "ray" / "bars-e2e"))
    return sorted(Path(c.path) for c, _ in result.best_checkpoints)


def test_a_checkpoint_holds_every_workers_random_state(pipeline):
    checkpoints = _recorded_checkpoints(pipeline)
    assert checkpoints and all({"state.pt", "rng-rank1.pt"} <= {p.name for p in c.iterdir()} for c in checkpoints)


def test_the_model_is_registered_as_champion_with_threshold_metrics_and_lineage(pipeline):
    v = _client(pipeline).get_model_version_by_alias(MODEL, "champion")
    assert str(v.version) == "1"
    tags = v.tags
    for key in ("threshold", "threshold_method", "test_roc_auc", "test_pr_auc", "test_precision",
                "test_recall", "test_f1", "data_fingerprint", "git_commit", "ray_run_name"):
        assert key in tags, key
    assert tags["threshold_method"] == "fpr" and tags["ray_run_name"] == "bars-e2e"
    assert float(tags["test_roc_auc"]) > 0.9  # vertical bars are easy anomalies for a horizontal-bar model


def test_champion_lookup_and_scoring_from_a_fresh_process(pipeline, tmp_path):
    x, y = bar_images(200, seed=99)
    np.save(tmp_path / "new.npy", x)
    env = {**os.environ, "MLFLOW_TRACKING_URI": pipeline["uri"]}
    show = subprocess.run([sys.executable, "-m", "deepgen.cli", "models", "show", f"{MODEL}@champion", "--json"],
                          capture_output=True, text=True, env=env, check=True)
    info = json.loads(show.stdout)
    assert str(info["version"]) == "1" and "champion" in info["aliases"]
    out = tmp_path / "scores.parquet"
    subprocess.run([sys.executable, "-m", "deepgen.cli", "score", "--model", f"{MODEL}@champion",
                    "--input", str(tmp_path / "new.npy"), "--output", str(out)], env=env, check=True,
                   capture_output=True, text=True)
    table = pq.read_table(out).to_pydict()
    scores, flags = np.array(table["score"]), np.array(table["is_anomaly"])
    threshold = float(info["tags"]["threshold"])
    assert len(scores) == 200 and np.array_equal(flags, scores > threshold)
    assert flags[y == 1].mean() > 0.8 and flags[y == 0].mean() < 0.2


def test_deepgen_score_and_the_pyfunc_give_the_scores_evaluation_gave(pipeline, tmp_path):
    """The registered model carries its score's statistics (per-feature error scales here): scoring the
    test split's raw rows with `deepgen score` reproduces the registered test ROC-AUC and threshold flags,
    and `mlflow.pyfunc` answers the same scores."""
    import mlflow
    from sklearn.metrics import roc_auc_score

    from deepgen.config import PipelineSpec
    from deepgen.data.dataset import load_split

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(pipeline["root"])
        data_dir = PipelineSpec.from_yaml(pipeline["spec"]).data_dir
        x, y = load_split(data_dir, "test")
    np.save(tmp_path / "test.npy", np.rint(x * 255).astype(np.uint8).reshape(-1, 8, 8))  # the raw images
    env = {**os.environ, "MLFLOW_TRACKING_URI": pipeline["uri"]}
    out = tmp_path / "scores.parquet"
    subprocess.run([sys.executable, "-m", "deepgen.cli", "score", "--model", f"{MODEL}@champion",
                    "--input", str(tmp_path / "test.npy"), "--output", str(out)], env=env, check=True,
                   capture_output=True, text=True)
    scores = np.array(pq.read_table(out).column("score").to_pylist())
    version = _client(pipeline).get_model_version_by_alias(MODEL, "champion")
    assert version.tags["score"] == "standardized"
    # what the pipeline chose from the data and the validation split, on the version and on its run
    run_tags = _client(pipeline).get_run(version.run_id).data.tags
    assert version.tags["resolved_loss"] == run_tags["resolved_loss"] == "bce"  # the spec's explicit loss
    assert 1 <= int(version.tags["kept_epoch"]) == int(run_tags["kept_epoch"]) <= EPOCHS
    assert roc_auc_score(y != 0, scores) == pytest.approx(float(version.tags["test_roc_auc"]), abs=1e-12)
    mlflow.set_tracking_uri(pipeline["uri"])
    # raw rows as float64 (N, D): the dtype of the logged signature, which the pyfunc enforces
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(np.rint(x * 255).astype(np.float64))
    np.testing.assert_allclose(served["score"].to_numpy(), scores, rtol=1e-9)


def test_rerunning_the_finished_pipeline_registers_nothing_new(pipeline, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(pipeline["root"])
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main(["run", str(pipeline["spec"])]) == 0
    assert "already registered" in capsys.readouterr().out
    assert len(_client(pipeline).search_model_versions(f"name = '{MODEL}'")) == 1


BAD = {
    "unknown field": (["--set", "train.epocs=3"], "train.epocs: Extra inputs are not permitted"),
    "unknown model kind": (["--set", "model.kind=transformer"], "model: Input tag 'transformer' found using 'kind'"),
    "missing data file": (["--set", "data.source.path=missing.npy"], "missing.npy: no such file"),
    "nan features": (["--set", "data.source.path=nan.npy", "--set", "data.source.labels=null"],
                     "nan.npy: non-finite value (nan)"),
    "empty split": (["--set", "data.source.path=tiny.npy", "--set", "data.source.labels=null"],
                    "the val split would be empty"),
    "wrong parquet schema": (["--set", "data.source={kind: table, path: strings.parquet}"],
                             "strings.parquet: no numeric feature columns"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_on_one_line_and_registers_nothing(pipeline, case, capsys):
    import pyarrow as pa

    root = pipeline["root"]
    x = np.random.default_rng(0).random((50, 8, 8)).astype(np.float32)
    x[3, 2, 2] = np.nan
    np.save(root / "nan.npy", x)
    np.save(root / "tiny.npy", np.zeros((2, 8, 8), np.float32))
    pq.write_table(pa.table({"name": ["a", "b", "c"]}), root / "strings.parquet")
    args, message = BAD[case]
    c = _client(pipeline)
    before = [(str(v.version), v.aliases) for v in c.search_model_versions(f"name = '{MODEL}'")]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(["run", str(pipeline["spec"]), *args, "--set", "train.run_name=bad"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and message in err, err
    assert [(str(v.version), v.aliases) for v in c.search_model_versions(f"name = '{MODEL}'")] == before
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert not list((root / "runs" / "data").glob(".*tmp*"))  # no half-written dataset


def test_scoring_input_of_the_wrong_width_is_refused(pipeline, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((4, 10, 10), np.uint8))
    env = {**os.environ, "MLFLOW_TRACKING_URI": pipeline["uri"]}
    out = subprocess.run([sys.executable, "-m", "deepgen.cli", "score", "--model", f"{MODEL}@champion",
                          "--input", str(tmp_path / "wide.npy"), "--output", str(tmp_path / "s.parquet")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"deepgen: error: {tmp_path / 'wide.npy'}: rows have 100 features, the model expects 64"]
    assert not (tmp_path / "s.parquet").exists()

