"""What a rerun, a bad metric or an odd name may do to the registry: a real SQLite MLflow store."""

from __future__ import annotations

import math

import pytest
from helpers import write_pipeline

from deepgen import orchestrate, tracking
from deepgen.anomaly import threshold_tags
from deepgen.config import FprThreshold, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.errors import DeepgenError, RegistryError, SpecError, TrainingError
from deepgen.tasks import Evaluation, build_task

NAME = "t-model"


@pytest.fixture
def registry(local_store):
    return local_store


def _named(spec: PipelineSpec, run_name: str) -> PipelineSpec:
    return spec.model_copy(update={"train": spec.train.model_copy(update={"run_name": run_name})})


def _register(spec, manifest, roc_auc: float):
    """What `deepgen run` registers at its end, for the spec's run name."""
    task = build_task(spec, manifest)
    ev = Evaluation({"roc_auc": roc_auc, "f1": 0.5}, registry_tags=threshold_tags(0.5, FprThreshold()))
    with tracking.finishing(orchestrate.start_run(spec, manifest)) as run_id:
        return orchestrate.register(spec, manifest, ev, task.build_models(), task, run_id)


def _aliases(c) -> dict[str, str]:
    return {a: str(v) for a, v in c.get_registered_model(NAME).aliases.items()}


# --- 1. a rerun never undoes a person's decision --------------------------------------------------


def test_a_rerun_of_a_rolled_back_champions_run_leaves_the_rollback_alone(registry, ray_local, capsys):
    spec, manifest, c = registry
    assert _register(_named(spec, "run-one"), manifest, 0.80).alias == "champion"  # v1
    assert _register(_named(spec, "run-two"), manifest, 0.90).alias == "champion"  # v2 beats v1
    assert _register(_named(spec, "run-three"), manifest, 0.70).alias == "challenger"  # v3
    assert _register(_named(spec, "run-four"), manifest, 0.60).alias == "challenger"  # v4 takes challenger
    tracking.rollback_champion(NAME, by="someone", reason="v2 misbehaves in production")
    before = (tracking.champion_history(NAME), _aliases(c))
    assert before[1] == {"champion": "1", "challenger": "4"}

    for run_name, version in (("run-two", "2"), ("run-three", "3")):  # neither holds an alias any more
        summary = orchestrate.run_pipeline(_named(spec, run_name))
        assert summary.reused and summary.registered.version == version
        assert f"v{version}, already settled" in capsys.readouterr().out
        assert (tracking.champion_history(NAME), _aliases(c)) == before
    assert len(c.search_model_versions(f"name = '{NAME}'")) == 4


# --- 2. a non-finite metric cannot win --------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_new_metric_is_registered_as_challenger_with_the_reason(registry, bad):
    spec, manifest, c = registry
    reg = _register(spec, manifest, bad)  # no champion yet, and still not promoted
    assert reg.alias == "challenger" and f"roc_auc is {bad}, not a finite number" in reg.reason
    assert "champion" not in _aliases(c)
    _register(_named(spec, "good"), manifest, 0.7)
    assert _register(_named(spec, "bad-again"), manifest, bad).alias == "challenger"
    assert _aliases(c)["champion"] == "2"


def test_a_champion_with_a_nan_metric_is_beaten_by_any_finite_one(registry):
    spec, manifest, c = registry
    _register(spec, manifest, math.nan)  # v1, challenger; then a person makes it champion
    tracking.move_champion(NAME, "1", by="someone", reason="chosen by hand")
    reg = _register(_named(spec, "next"), manifest, 0.2)
    assert (reg.alias, reg.previous_champion) == ("champion", "1") and "non-finite nan" in reg.reason
    assert _aliases(c)["champion"] == "2"


# --- 3. names cannot escape, lookups do not swallow errors -----------------------------------------


@pytest.mark.parametrize("field, value", [
    ("registry.model_name", "o'brien"), ("registry.model_name", "../../x"), ("train.run_name", "it's"),
    ("train.run_name", "../../../x"), ("name", "a/b"), ("name", ".."), ("train.run_name", "x" * 129)])
def test_names_that_would_escape_a_folder_or_a_filter_are_refused_when_loaded(tmp_path, field, value):
    with pytest.raises(SpecError) as e:
        PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"), [f"{field}={value}"])
    assert str(e.value).startswith(f"{tmp_path / 'p.yaml'}: {field}: ") and "\n" not in str(e.value)


def test_names_with_quotes_from_elsewhere_are_found_again(registry):
    """A model registered outside deepgen, or looked up from the command line, with a quote in its name."""
    spec, manifest, c = registry
    odd = spec.model_copy(update={"registry": spec.registry.model_copy(update={"model_name": "o'brien"}),
                                  "train": spec.train.model_copy(update={"run_name": "it's"})})
    reg = _register(odd, manifest, 0.8)  # start_run searched for the run name "it's"
    assert str(tracking.resolve("o'brien").version) == reg.version == "1"
    assert str(tracking.find_version_for_run("o'brien", "it's").version) == "1"
    assert orchestrate.start_run(odd, manifest) == c.get_model_version("o'brien", "1").run_id  # found, not new
    with pytest.raises(RegistryError, match="cannot be looked up"):
        tracking.resolve("both'\"quotes")


# --- 5. a run name's work is reused only under the spec it was done with ---------------------------


def test_a_changed_spec_under_a_registered_run_name_is_refused(registry, ray_local):
    spec, manifest, c = registry
    named = _named(spec, "fixed-name")
    _register(named, manifest, 0.8)
    changed = PipelineSpec.from_yaml(spec_path := write_pipeline(spec.runs_dir.parent / "q.yaml"),
                                     ["train.run_name=fixed-name", "model.hidden=[12]"])
    assert changed.spec_hash() != named.spec_hash() and spec_path.exists()
    with pytest.raises(DeepgenError, match=r"^train.run_name fixed-name: registered t-model v1 from spec "
                                           rf"{named.spec_hash()}, this spec is {changed.spec_hash()}; "
                                           r"start a new run with --set train.run_name="):
        orchestrate.run_pipeline(changed)
    with pytest.raises(DeepgenError, match=r"MLflow run fixed-name was started from spec .* start a new run"):
        orchestrate.start_run(changed, manifest)
    assert len(c.search_model_versions(f"name = '{NAME}'")) == 1


def test_a_checkpoint_of_another_spec_is_not_resumed(tmp_path):
    from deepgen.train.env import LocalEnv
    from deepgen.train.loop import train_loop

    path = write_pipeline(tmp_path / "p.yaml")
    first = PipelineSpec.from_yaml(path, ["train.run_name=same", "train.epochs=1"])
    manifest, _ = prepare_dataset(first.data, first.data_dir, log=lambda m: None)
    env = lambda s: LocalEnv(s.data_dir, s.anomaly, tmp_path / "ckpt")  # noqa: E731
    train_loop(first, manifest, env(first))
    # the same shapes, another learning rate: the weights would load and the run would go on silently
    changed = PipelineSpec.from_yaml(path, ["train.run_name=same", "train.epochs=1", "train.lr=0.01"])
    with pytest.raises(TrainingError, match=rf"checkpoints are from spec {first.spec_hash()}, this spec is "
                                            rf"{changed.spec_hash()}; start a new run with --set train.run_name="):
        train_loop(changed, manifest, env(changed))
    assert train_loop(first, manifest, env(first))[-1]["epoch"] == 1  # its own spec still resumes


# --- 9. a registered model is loaded only as it was registered ---------------------------------------


def test_a_model_changed_in_the_artifact_store_is_refused_when_loaded(registry):
    spec, manifest, c = registry
    _register(spec, manifest, 0.8)
    version = tracking.resolve(f"{NAME}/1")
    with tracking.fetched_model_dir(version) as folder:  # loads: the files are the ones registered
        assert version.tags[tracking.MODEL_SHA256_TAG] == tracking.model_sha256(folder)
    (weights,) = spec.runs_dir.joinpath("mlartifacts").rglob("weights.pt")
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # someone with write access to the store
    with pytest.raises(RegistryError, match=r"t-model/1: the model's files in the artifact store do not match "
                                            r"their registered model_sha256"):
        tracking.load_registered(version, family="anomaly")
    # the gate rescoring that champion on other data says so too, instead of keeping it without a word
    other = manifest.model_copy(update={"fingerprint": "another-dataset"})
    with pytest.raises(RegistryError, match="do not match their registered model_sha256"):
        orchestrate.gate(spec, other, {"roc_auc": 0.9})
