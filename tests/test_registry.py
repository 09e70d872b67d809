"""The champion gate against a real SQLite MLflow registry (no Ray needed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deepgen import orchestrate, tracking
from deepgen.anomaly import threshold_tags
from deepgen.config import FprThreshold, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.errors import DataError
from deepgen.tasks import Evaluation, build_task
from deepgen.tasks.autoencoder import AnomalyScorer


@pytest.fixture
def registry(local_store):
    spec, manifest, client = local_store
    return spec, manifest, orchestrate.start_run(spec, manifest), client


def _register(spec, manifest, run_id, roc_auc: float, threshold: float = 0.5):
    task = build_task(spec, manifest)
    ev = Evaluation({"roc_auc": roc_auc, "f1": 0.5}, registry_tags=threshold_tags(threshold, FprThreshold()))
    return orchestrate.register(spec, manifest, ev, task.build_models(), task, run_id)


def test_champion_moves_only_when_the_gate_passes(registry):
    spec, manifest, run_id, c = registry
    first = _register(spec, manifest, run_id, roc_auc=0.80)
    assert (first.alias, first.reason) == ("champion", "no champion yet")
    worse = _register(spec, manifest, run_id, roc_auc=0.75)
    assert worse.alias == "challenger" and "does not beat champion v1" in worse.reason
    assert str(c.get_model_version_by_alias("t-model", "champion").version) == "1"
    better = _register(spec, manifest, run_id, roc_auc=0.90)
    assert better.alias == "champion" and better.previous_champion == "1"
    assert str(c.get_model_version_by_alias("t-model", "champion").version) == str(better.version)
    assert str(c.get_model_version_by_alias("t-model", "challenger").version) == str(worse.version)


def test_registered_model_loads_without_unpickling_and_keeps_its_threshold(registry):
    spec, manifest, run_id, c = registry
    reg = _register(spec, manifest, run_id, roc_auc=0.8, threshold=0.123)
    version = tracking.resolve(f"t-model/{reg.version}")
    before = set(Path(tempfile.gettempdir()).glob("deepgen-model-*"))
    scorer = tracking.load_registered(version, family="anomaly")
    assert isinstance(scorer, AnomalyScorer)
    assert set(Path(tempfile.gettempdir()).glob("deepgen-model-*")) == before  # the download is not left behind
    assert scorer.threshold == pytest.approx(0.123) and float(version.tags["threshold"]) == pytest.approx(0.123)
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    assert scorer.score(x).shape == (5,)
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model("models:/t-model@champion")  # models-from-code, no pickle
    # raw rows as float64 (N, D), the dtype of the logged signature and of JSON numbers
    out = pyfunc.predict(np.random.default_rng(0).integers(0, 17, (3, 64)).astype(np.float64))
    assert list(out.columns) == ["score", "is_anomaly"] and len(out) == 3


def test_a_champion_from_other_data_is_rescored_on_this_test_split(registry, tmp_path):
    spec, manifest, run_id, c = registry
    _register(spec, manifest, run_id, roc_auc=0.99)  # its 0.99 was measured elsewhere
    other = manifest.model_copy(update={"fingerprint": "another-dataset"})
    rescored = orchestrate.score_champion_on(spec, tracking.champion("t-model"))["roc_auc"]
    assert rescored != pytest.approx(0.99)
    new = rescored + 0.01  # better than the champion on *these* rows, far below its stored 0.99
    promote, reason, previous = orchestrate.gate(spec, other, {"roc_auc": new})
    assert promote and previous == "1" and f"beats champion v1 ({rescored:.4f})" in reason
    # the same rows but other anomaly labels: the stored 0.99 counted other rows as anomalies
    relabelled = spec.model_copy(update={"anomaly": spec.anomaly.model_copy(update={"anomalous_labels": [3]})})
    rescored = orchestrate.score_champion_on(relabelled, tracking.champion("t-model"))["roc_auc"]
    promote, reason, _ = orchestrate.gate(relabelled, manifest, {"roc_auc": 0.98})
    assert f"champion v1 ({rescored:.4f})" in reason and promote == (0.98 > rescored)
    assert orchestrate.gate(spec, manifest, {"roc_auc": 0.98})[1].endswith("does not beat champion v1 (0.9900)")


def test_a_rescored_champion_sees_the_test_rows_scaled_as_it_was_trained(tmp_path):
    """A table's min-max range is fit on train, so new rows move it; the champion must be given the raw
    test rows under its own scaler, not rows scaled for the new model."""
    from deepgen.anomaly import evaluate_scores
    from deepgen.data.dataset import load_split, normal_mask
    from deepgen.data.manifest import read_manifest

    rng = np.random.default_rng(0)

    def write_csv(path, n, top):
        a, b = rng.uniform(0, top, n), rng.uniform(0, 10, n)
        kind = np.where(rng.random(n) < 0.2, "bad", "ok")
        np.savetxt(path, np.c_[a, b, kind], fmt="%s", delimiter=",", header="a,b,kind", comments="")

    specs = {}
    for name, top in (("old", 10.0), ("new", 30.0)):  # the new data's feature a reaches 3x further
        write_csv(tmp_path / f"{name}.csv", 300, top)
        specs[name] = PipelineSpec.validate_dict({
            "name": name, "data": {"source": {"kind": "table", "path": str(tmp_path / f"{name}.csv"),
                                              "label_column": "kind"}},
            "model": {"kind": "dense_autoencoder", "hidden": [4], "latent_dim": 2},
            "anomaly": {"anomalous_labels": ["bad"]}, "registry": {"model_name": "m"},
            "tracking": {"runs_dir": str(tmp_path / name)}})
        prepare_dataset(specs[name].data, specs[name].data_dir, log=lambda m: None)
    old_manifest = read_manifest(specs["old"].data_dir)
    task = build_task(specs["old"], old_manifest)
    champion = AnomalyScorer.load(task.export(tmp_path / "champion", task.build_models(),
                                              Evaluation({}, registry_tags=threshold_tags(0.01, FprThreshold()))))
    new_dir = specs["new"].data_dir
    x_new, y_new = load_split(new_dir, "test")
    raw = read_manifest(new_dir).scaler.invert(x_new)
    assert raw[:, 0].max() > 12  # the raw values came back, beyond the old range
    truth = ~normal_mask(y_new, specs["new"].anomaly, len(x_new))
    expected = evaluate_scores(champion.score(old_manifest.scaler.apply(raw)), truth, champion.threshold)
    naive = evaluate_scores(champion.score(x_new), truth, champion.threshold)
    got = champion.evaluate(new_dir, specs["new"].anomaly)
    assert got == pytest.approx(expected, rel=1e-5) and got != pytest.approx(naive, rel=1e-5)
    # `deepgen score` on that prepared split reads it the same way; without its manifest it is refused
    x_read, _ = champion.read_input(new_dir / "test.parquet")
    np.testing.assert_allclose(x_read, old_manifest.scaler.apply(raw), rtol=1e-5, atol=1e-6)
    (tmp_path / "alone").mkdir()
    shutil.copy(new_dir / "test.parquet", tmp_path / "alone" / "test.parquet")
    with pytest.raises(DataError, match=r"test.parquet: a prepared split without its manifest.json beside it"):
        champion.read_input(tmp_path / "alone" / "test.parquet")


def test_the_mlflow_model_reads_a_tables_columns_by_name_and_flags_as_deepgen_score_does(tmp_path):
    """pyfunc predict on a DataFrame whose columns come in another order, with an extra one, scores what
    `deepgen score` scores for the same file; a threshold just below the lowest score flags every row
    (compared in float64 as calibrated, not rounded onto that score in float32)."""
    import pandas as pd

    from deepgen.mlflow_model import DeepgenModel

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.uniform(0, 10, 200), "b": rng.uniform(100, 200, 200)})
    frame.assign(kind="ok").to_csv(tmp_path / "t.csv", index=False)
    spec = PipelineSpec.validate_dict({
        "name": "t", "data": {"source": {"kind": "table", "path": str(tmp_path / "t.csv"), "label_column": "kind"}},
        "model": {"kind": "dense_autoencoder", "hidden": [4], "latent_dim": 2}, "registry": {"model_name": "m"},
        "anomaly": {"score": "reconstruction"},  # the threshold below is cut against the model's own error
        "tracking": {"runs_dir": str(tmp_path / "runs")}})
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    models = task.build_models()
    lowest = float(AnomalyScorer.scores_of(models["model"], manifest.scaler.apply(frame.to_numpy())).min())
    threshold = float(np.nextafter(lowest, -np.inf))
    assert np.float32(threshold) == np.float32(lowest)  # the cut that float32 would erase
    ev = Evaluation({}, registry_tags=threshold_tags(threshold, FprThreshold()))
    folder = task.export(tmp_path / "m", models, ev)
    scorer = AnomalyScorer.load(folder)
    expected = scorer.score(scorer.read_input(tmp_path / "t.csv")[0])

    model = DeepgenModel()
    model.load_context(type("Context", (), {"artifacts": {"model_dir": str(folder)}})())
    out = model.predict(None, frame[["b", "a"]].assign(id=np.arange(len(frame))))
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-6)
    assert out["is_anomaly"].all()
    with pytest.raises(DataError, match="model input: missing feature column 'b'"):
        model.predict(None, frame[["a"]])


def test_a_champion_that_moved_during_the_upload_is_gated_against_again(registry):
    spec, manifest, run_id, c = registry
    _register(spec, manifest, run_id, roc_auc=0.80)  # v1, champion
    task = build_task(spec, manifest)
    verdict = orchestrate.gate(spec, manifest, {"roc_auc": 0.85})  # run A: beats v1 ...
    assert verdict[0] and verdict[2] == "1"
    _register(spec, manifest, run_id, roc_auc=0.95)  # ... but run B registers v2 (0.95) meanwhile
    ev = Evaluation({"roc_auc": 0.85}, registry_tags=threshold_tags(0.5, FprThreshold()))
    with tempfile.TemporaryDirectory() as tmp:
        version = tracking.log_and_register(run_id, task.export(Path(tmp) / "m", task.build_models(), ev),
                                            "t-model", {"test_roc_auc": 0.85, "gate": verdict[1]})
    reg = orchestrate.settle_alias(spec, manifest, version, ev.metrics, verdict)
    assert (reg.alias, reg.previous_champion) == ("challenger", "2") and "does not beat champion v2" in reg.reason
    assert str(c.get_model_version_by_alias("t-model", "champion").version) == "2"
    assert c.get_model_version("t-model", version.version).tags["gate"] == reg.reason


def test_a_run_that_stopped_between_registering_and_moving_the_alias_finishes_on_rerun(registry, ray_local):
    spec, manifest, run_id, c = registry
    task = build_task(spec, manifest)
    ev = Evaluation({"roc_auc": 0.9}, registry_tags=threshold_tags(0.5, FprThreshold()))
    with tempfile.TemporaryDirectory() as tmp:  # what register() had done when the process died
        version = tracking.log_and_register(run_id, task.export(Path(tmp) / "m", task.build_models(), ev), "t-model",
                                            {"test_roc_auc": 0.9, tracking.RUN_NAME_TAG: spec.run_name})
    assert not c.get_model_version("t-model", version.version).aliases
    summary = orchestrate.run_pipeline(spec)  # the same run again: no training, the alias is settled
    assert summary.reused and (summary.registered.version, summary.registered.alias) == ("1", "champion")
    assert str(c.get_model_version_by_alias("t-model", "champion").version) == "1"
    assert len(c.search_model_versions("name = 't-model'")) == 1


def test_lookup_of_unknown_models_says_what_to_do(registry):
    from deepgen.errors import RegistryError

    with pytest.raises(RegistryError, match="deepgen models list"):
        tracking.resolve("nope@champion")
    with pytest.raises(RegistryError, match="nope: not found in the registry"):
        tracking.champion_history("nope")


def test_a_registry_that_does_not_answer_is_not_reported_as_a_missing_model(registry):
    """A tracking server that is down: one line naming it and what to check, for every registry read,
    the pipeline's own lookups too ("none registered" would train and register again; "no champion"
    would promote anything)."""
    import mlflow

    from deepgen.errors import RegistryError

    spec = registry[0]
    try:
        tracking.configure_uri("http://127.0.0.1:9")  # nothing listens on the discard port
        with tracking.quick_requests():
            for read in (tracking.list_models, lambda: tracking.resolve("t-model@champion"),
                         lambda: tracking.champion_history("t-model"), lambda: tracking.champion("t-model"),
                         lambda: tracking.find_version_for_run("t-model", "r")):
                with pytest.raises(RegistryError, match=r"registry at http://127.0.0.1:9 did not answer"):
                    read()
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; configure would keep it
        tracking.configure(spec.runs_dir)
    assert mlflow.get_registry_uri().startswith("sqlite:")
