"""`deepgen score` over a folder of Parquet files: Ray Data map_batches with the model loaded once per actor,
a folder of Parquet files out, the same scores the in-memory path gives, and one-line errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepgen import orchestrate, tracking
from deepgen.anomaly import threshold_tags
from deepgen.cli import main
from deepgen.config import FprThreshold, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.tasks import Evaluation, build_task


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A SQLite registry with an (untrained) digits anomaly detector as champion."""
    root = tmp_path_factory.mktemp("score-sharded")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure(root / "runs")
        spec = PipelineSpec.validate_dict({
            "name": "anom", "data": {"source": {"kind": "digits"}},
            "model": {"kind": "dense_autoencoder", "hidden": [8], "latent_dim": 2},
            "anomaly": {"anomalous_labels": [9]}, "registry": {"model_name": "anom"},
            "tracking": {"runs_dir": str(root / "runs")}})
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
        task = build_task(spec, manifest)
        ev = Evaluation({"roc_auc": 0.5}, registry_tags=threshold_tags(0.5, FprThreshold()))
        orchestrate.register(spec, manifest, ev, task.build_models(), task, orchestrate.start_run(spec, manifest))
    return root / "runs"


def digit_parts(folder, n_files=3):
    """Raw digits rows (values 0..16) as a `features` list column with labels, in part files."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder.mkdir()
    x = d.data.astype(np.float32)[:600]
    y = d.target[:600]
    for i, idx in enumerate(np.array_split(np.arange(600), n_files)):
        pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x[idx].ravel()), 64),
                                 "label": y[idx]}), folder / f"part-{i}.parquet")
    return x, y


def test_a_folder_is_scored_by_ray_data_actors_into_a_folder_with_the_in_memory_scores(
        tmp_path, runs_dir, ray_local, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    x, y = digit_parts(tmp_path / "rows")
    out = tmp_path / "scores.parquet"
    code = main(["score", "--model", "anom@champion", "--input", str(tmp_path / "rows"), "--output", str(out),
                 "--runs-dir", str(runs_dir)])
    assert code == 0, capsys.readouterr().err
    assert out.is_dir() and list(out.glob("*.parquet"))
    scored = pq.read_table(out)
    assert scored.num_rows == 600 and {"score", "is_anomaly", "label", "path"} <= set(scored.column_names)
    assert "600 rows" in capsys.readouterr().out
    tracking.configure(runs_dir)
    scorer = tracking.load_registered(tracking.resolve("anom@champion"), family="anomaly")
    expected = scorer.score(scorer.meta.scaler.apply(x))
    # per input file, the same scores in the same order as the in-memory path
    for i, idx in enumerate(np.array_split(np.arange(600), 3)):
        part = scored.filter(pa.compute.match_substring(scored.column("path"), f"part-{i}.parquet"))
        assert np.allclose(np.sort(part.column("score").to_numpy()), np.sort(expected[idx]), rtol=1e-5)
    assert scored.column("is_anomaly").to_numpy().sum() == (expected > scorer.threshold).sum()


def test_a_bad_file_in_the_folder_is_one_line_naming_it_and_nothing_is_written(
        tmp_path, runs_dir, ray_local, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    digit_parts(tmp_path / "rows")
    x = np.ones((10, 64), np.float32)
    x[3, 5] = np.nan
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64)}),
                   tmp_path / "rows" / "part-9.parquet")
    out = tmp_path / "scores.parquet"
    code = main(["score", "--model", "anom@champion", "--input", str(tmp_path / "rows"), "--output", str(out),
                 "--runs-dir", str(runs_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "part-9.parquet: rows hold NaN" in err[0], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rows"]


@pytest.mark.slow
def test_evaluation_of_a_split_ray_data_prepared_runs_on_actors_and_gives_the_in_process_figures(
        tmp_path, ray_local, monkeypatch):
    """A split the Ray Data prepare wrote (a folder of part files) is evaluated by Ray Data actors that each
    hold the model: the `combined` score's statistics fitted on the train split in two passes, the val and
    test scores, the threshold and the metrics, and the gate's rescoring of an exported model, all equal
    to the same evaluation read chunk by chunk in this process."""
    from ray.util.state import list_actors
    from sklearn.datasets import load_digits

    from deepgen import batch_scoring
    from deepgen.data.dataset import split_files
    from deepgen.tasks.autoencoder import AnomalyScorer

    d = load_digits()
    np.save(tmp_path / "x.npy", d.data.astype(np.float32))
    np.save(tmp_path / "y.npy", d.target.astype(np.int64))
    spec = PipelineSpec.validate_dict({
        "name": "ev", "data": {"source": {"kind": "npy", "path": str(tmp_path / "x.npy"),
                                          "labels": str(tmp_path / "y.npy")},
                               "engine": "ray_data", "output": str(tmp_path / "data")},
        "model": {"kind": "dense_autoencoder", "hidden": [16], "latent_dim": 4},
        "anomaly": {"anomalous_labels": [9], "score": "combined"}, "registry": {"model_name": "ev"}})
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    assert all(len(split_files(spec.data_dir, s)) > 1 for s in ("train", "val", "test"))  # part files
    assert batch_scoring.maps_on_ray_data(spec.data_dir, "test")
    task = build_task(spec, manifest)
    import torch

    torch.manual_seed(0)
    models = task.build_models()
    gcs = ray_local.get_runtime_context().gcs_address
    job = ray_local.get_runtime_context().get_job_id()

    def map_actors():  # Ray Data's actors of map_split's pool: class MapWorker(MapBatches(_MapBatch))
        return {a.actor_id for a in list_actors(address=gcs, limit=10000, raise_on_missing_output=False)
                if a.job_id == job and "MapBatches(_MapBatch)" in a.class_name}

    before = map_actors()
    on_actors = task.evaluate(models, spec.data_dir)
    assert map_actors() - before, "no Ray Data actor mapped the splits"
    exported = AnomalyScorer.load(task.export(tmp_path / "model", models, on_actors))
    rescored = exported.evaluate(spec.data_dir, spec.anomaly)

    monkeypatch.setattr(batch_scoring, "maps_on_ray_data", lambda *a: False)  # the same, chunk by chunk here
    here = build_task(spec, manifest).evaluate(models, spec.data_dir)
    assert on_actors.registry_tags["threshold"] == pytest.approx(here.registry_tags["threshold"], rel=1e-6)
    assert on_actors.metrics.keys() == here.metrics.keys() and np.isfinite(list(here.metrics.values())).all()
    for k, v in here.metrics.items():
        assert on_actors.metrics[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert rescored == pytest.approx(exported.evaluate(spec.data_dir, spec.anomaly), rel=1e-6)
    assert rescored["roc_auc"] == pytest.approx(here.metrics["roc_auc"], rel=1e-6)
