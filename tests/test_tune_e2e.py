"""A real Ray Tune sweep: 4 trials (one TorchTrainer each) on tiny data, ASHA, a planted failing trial."""

import pytest
from helpers import bars_source, write_pipeline
from mlflow.tracking import MlflowClient

from deepgen import cli
from deepgen.config import PipelineSpec
from deepgen.tune import run_sweep

pytestmark = pytest.mark.ray


def _spec(tmp_path, lrs, epochs=3, name="sweep", space=None):
    return write_pipeline(
        tmp_path / f"{name}.yaml", name=name, data={"source": bars_source(tmp_path, 300, seed=3)},
        model={"kind": "dense_autoencoder", "hidden": [16], "latent_dim": 4, "loss": "mse"},
        # max_failures -1 ("restart forever"): a trial whose loss diverges must still end, since a restart
        # would diverge again (deepgen.train.loop.train_loop_per_worker)
        train={"epochs": epochs, "batch_size": 32, "max_failures": -1}, scaling={"num_workers": 1},
        anomaly={"normal_labels": [0]}, registry={"model_name": f"{name}-model"},
        tune={"search_space": space or {"train.lr": {"type": "grid", "values": lrs}}, "num_samples": 1,
              "max_concurrent_trials": 2, "metric": "val_loss", "mode": "min",
              "scheduler": {"grace_period": 1, "reduction_factor": 2}},
    )


@pytest.mark.slow
def test_sweep_stops_weak_trials_survives_a_failing_one_and_registers_the_best(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # 1e30 diverges (NaN): that trial fails; 1e-5 barely learns: ASHA should stop it at the first rung
    path = _spec(tmp_path, [0.01, 0.003, 1e-5, 1e30])
    result = run_sweep(PipelineSpec.from_yaml(path))

    rows = {r["values"]["train.lr"]: r for r in result.trials}
    assert len(rows) == 4
    assert rows[1e30]["status"] == "error" and "diverged" in rows[1e30]["error"]
    done = [r for r in result.trials if r["status"] == "done"]
    assert len(done) == 3
    assert any(r["epochs"] < 3 for r in done), rows  # ASHA stopped at least one trial early
    assert result.best_metric == min(r["best"] for r in done)
    # what was registered is the best trial's best epoch, not merely its last one
    assert result.evaluation.history[-1]["epoch"] == result.best_epoch
    assert result.evaluation.history[-1]["val_loss"] == pytest.approx(result.best_metric)
    assert result.best_values["train.lr"] in (0.01, 0.003)

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    c = MlflowClient(uri, uri)
    version = c.get_model_version_by_alias("sweep-model", "champion")
    assert version.tags["ray_run_name"].endswith(result.best_trial)
    assert version.tags["mlflow_run_id"] == result.parent_run_id
    exp = c.get_experiment_by_name("sweep")
    children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 4
    for child in children:
        steps = [m.step for m in c.get_metric_history(child.info.run_id, "train_loss")]
        assert steps == sorted(set(steps))  # no duplicated history
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["best_trial"] == result.best_trial
    assert "plots/search.png" in {a.path for a in c.list_artifacts(result.parent_run_id, "plots")}

    again = run_sweep(PipelineSpec.from_yaml(path))  # the finished sweep is restored: nothing trains or registers
    assert (again.best_trial, again.registered.version) == (result.best_trial, result.registered.version)
    assert len(c.search_model_versions("name = 'sweep-model'")) == 1
    assert len(c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")) == 4


def test_a_sweep_where_every_trial_fails_registers_nothing_and_exits_non_zero(ray_local, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Every trial's spec is invalid (a code of size <= 0), so each fails before starting a trainer.
    space = {"model.latent_dim": {"type": "grid", "values": [0, -1]}}
    path = _spec(tmp_path, [], epochs=1, name="doomed", space=space)
    assert cli.main(["tune", str(path)]) == 1
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("deepgen: error:")]
    assert len(ours) == 1 and "all 2 trials failed; nothing registered" in ours[0], ours  # Ray logs the rest
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert MlflowClient(uri, uri).search_registered_models() == []


def test_of_tied_best_epochs_the_last_is_taken_the_one_whose_checkpoint_ray_keeps():
    import pandas as pd
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    from deepgen.tune import _best_epoch

    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "val_accuracy": [0.80, 0.85, 0.85, 0.85, 0.82],
                            CHECKPOINT_PATH_KEY: [f"ckpt/{e}" for e in range(1, 6)]})
    assert _best_epoch(history, "val_accuracy", "max") == (4, 0.85, "ckpt/4")
    assert _best_epoch(history.assign(val_loss=[3.0, 1.0, 1.0, 2.0, 1.0]), "val_loss", "min")[0] == 5


def test_the_best_checkpoint_is_fetched_from_object_storage_by_the_path_ray_reports(tmp_path, monkeypatch):
    """Ray reports `bucket/sweep/.../checkpoint_000002` for an `s3://bucket/sweep` storage: the copy must
    read it through the bucket's filesystem (here a local folder stands in for the bucket)."""
    import pyarrow.fs

    from deepgen import tune

    bucket = tmp_path / "bucket-root"
    (bucket / "bucket/sweep/t1/checkpoint_000002").mkdir(parents=True)
    (bucket / "bucket/sweep/t1/checkpoint_000002/state.pt").write_bytes(b"weights")
    stand_in = pyarrow.fs.SubTreeFileSystem(str(bucket), pyarrow.fs.LocalFileSystem())
    monkeypatch.setattr(tune, "_storage_filesystem", lambda uri: stand_in if uri.startswith("s3://") else None)
    (tmp_path / "best").mkdir()  # a temporary folder, as run_sweep gives it
    tune._copy_checkpoint("bucket/sweep/t1/checkpoint_000002", tmp_path / "best", "s3://bucket/sweep")
    assert (tmp_path / "best" / "state.pt").read_bytes() == b"weights"
