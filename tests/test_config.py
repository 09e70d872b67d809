import pytest
from helpers import write_pipeline

from deepgen.config import PipelineSpec
from deepgen.errors import SpecError


def test_valid_spec_has_typed_sections_and_derived_names(tmp_path):
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"))
    assert spec.model.kind == "dense_autoencoder"
    assert spec.train.epochs == 2
    assert spec.run_name.startswith("t-") and len(spec.run_name) == 12
    assert spec.data_dir.parent == tmp_path / "runs" / "data" and spec.data_dir.name.startswith("t-")
    other = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"), overrides=["data.seed=5"])
    assert other.data_dir != spec.data_dir  # a data variant prepares into its own folder ...
    same = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"), overrides=["train.lr=0.5"])
    assert same.data_dir == spec.data_dir  # ... a training variant reuses the prepared data


def test_error_names_file_and_field_path(tmp_path):
    path = write_pipeline(tmp_path / "x.yaml", train={"epochs": 0})
    with pytest.raises(SpecError) as e:
        PipelineSpec.from_yaml(path)
    assert str(e.value) == f"{path}: train.epochs: Input should be greater than 0"


def test_unknown_field_is_rejected(tmp_path):
    path = write_pipeline(tmp_path / "x.yaml", train={"epochs": 2, "epocs": 3})
    with pytest.raises(SpecError, match=r"x.yaml: train.epocs: Extra inputs are not permitted"):
        PipelineSpec.from_yaml(path)


def test_a_sweep_over_data_fields_is_refused(tmp_path):
    # every trial trains on the dataset prepared once before the sweep, so a data.* value would be a lie
    path = write_pipeline(tmp_path / "x.yaml", tune={"search_space": {
        "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "data.resize": {"type": "choice", "values": [16, 32]}}})
    with pytest.raises(SpecError, match=r"^\S+x.yaml: tune.search_space: data.resize: a sweep can "
                                        r"search model.\*, train.\*, anomaly.\* fields only"):
        PipelineSpec.from_yaml(path)


@pytest.mark.parametrize("space, search_alg, error", [
    ({"train.lr": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}, "random",
     r"x.yaml: tune.search_space.train.lr: loguniform: low \(0.01\) must be below high"),
    ({"model.latent_dim": {"type": "randint", "low": 8, "high": 8}}, "random", r"randint: low \(8\) must be below"),
    ({"model.latent_dim": {"type": "grid", "values": [4, 8]}}, "optuna",
     r"x.yaml: tune: search_space.model.latent_dim: a grid is searched by search_alg random only"),
])
def test_a_search_space_tune_would_refuse_mid_sweep_is_refused_when_loaded(tmp_path, space, search_alg, error):
    path = write_pipeline(tmp_path / "x.yaml", tune={"search_space": space, "search_alg": search_alg})
    with pytest.raises(SpecError, match=error):
        PipelineSpec.from_yaml(path)


def test_unknown_model_kind_is_rejected(tmp_path):
    path = write_pipeline(tmp_path / "x.yaml", model={"kind": "transformer_ae"})
    with pytest.raises(SpecError, match=r"x.yaml: model: Input tag 'transformer_ae' found using 'kind' does not"):
        PipelineSpec.from_yaml(path)


def test_nested_union_error_path_drops_the_tag(tmp_path):
    path = write_pipeline(tmp_path / "x.yaml", data={"source": {"kind": "idx"}})
    with pytest.raises(SpecError, match=r"x.yaml: data.source.path: Field required"):
        PipelineSpec.from_yaml(path)


def test_missing_file_and_malformed_yaml(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: no such pipeline file"):
        PipelineSpec.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: malformed YAML \(line \d+, column \d+\)"):
        PipelineSpec.from_yaml(bad)


def test_overrides_set_nested_fields_and_are_validated(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml")
    spec = PipelineSpec.from_yaml(path, ["train.epochs=7", "model.hidden=[8, 4]", "scaling.use_gpu=true"])
    assert spec.train.epochs == 7 and spec.model.hidden == [8, 4] and spec.scaling.use_gpu is True
    with pytest.raises(SpecError, match=r"p.yaml: train.lr: Input should be greater than 0"):
        PipelineSpec.from_yaml(path, ["train.lr=-1"])
    with pytest.raises(SpecError, match="expected dotted.field=value"):
        PipelineSpec.from_yaml(path, ["train.epochs"])


def test_spec_hash_ignores_where_things_are_stored(tmp_path):
    a = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"))
    b = PipelineSpec.from_yaml(tmp_path / "p.yaml", ["tracking.runs_dir=elsewhere", "registry.model_name=other"])
    c = PipelineSpec.from_yaml(tmp_path / "p.yaml", ["train.lr=0.1"])
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()


def test_shipped_pipelines_validate():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("pipelines/*.yaml")):
        PipelineSpec.from_yaml(path)


def test_the_optuna_search_algorithm_is_built_when_asked_for():
    from ray.tune.search.optuna import OptunaSearch

    from deepgen.config import TuneSpec
    from deepgen.tune import _search_alg

    space = {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    assert _search_alg(TuneSpec(search_space=space)) is None  # Tune's random search
    assert isinstance(_search_alg(TuneSpec(search_space=space, search_alg="optuna")), OptunaSearch)


@pytest.mark.parametrize("override, field", [
    ("scaling.num_workers=2000", "scaling.num_workers"), ("train.batch_size=10000000", "train.batch_size"),
    ("model.hidden=[64000]", "model.hidden.0"), ("model.latent_dim=800000", "model.latent_dim"),
    ("tune.max_concurrent_trials=10000", "tune.max_concurrent_trials")])
def test_sizes_a_typo_would_make_exhaust_the_machine_are_refused_when_loaded(tmp_path, override, field):
    sweep = {"tune": {"search_space": {"train.lr": {"type": "choice", "values": [0.1]}}}} if "tune" in override else {}
    with pytest.raises(SpecError, match=rf": {field}: Input should be less than or equal to \d+$"):
        PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml", **sweep), [override])


def test_yaml_aliases_are_refused_in_the_file_and_in_overrides(tmp_path):
    """Nested aliases expand a few lines into billions of entries before anything is validated."""
    path = write_pipeline(tmp_path / "p.yaml")
    path.write_text(path.read_text() + "x: &a [1, 2]\ny: [*a, *a]\n")
    with pytest.raises(SpecError, match=r"p.yaml: malformed YAML \(line \d+, column \d+\): aliases \(\*a\) are not"):
        PipelineSpec.from_yaml(path)
    with pytest.raises(SpecError, match=r"--set train.epochs: cannot parse value '\*a'"):
        PipelineSpec.from_yaml(write_pipeline(tmp_path / "q.yaml"), ["train.epochs=*a"])
