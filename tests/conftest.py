"""Shared fixtures: one local Ray instance for the whole session, generated data, temporary stores (the helpers
they use, and tests import, are in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import bars_source, write_pipeline

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's telemetry thread sets and unsets a variable in os.environ while requests iterates os.environ in the
# test's thread: a KeyError seen once in test_tracking_server. The suite is offline anyway.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# The files that take minutes (each ran 1.5 to 9 minutes in the last whole runs), collected first: with two
# test processes (scripts/test.sh, --dist loadfile hands out files in collection order) they then overlap
# each other and the many short files, instead of the longest one starting last. Order within a file stays.
SLOW_FILES = ("test_pipeline_e2e.py", "test_tune_resume.py", "test_multinode.py", "test_prepare_ray.py",
              "test_tune_e2e.py", "test_cluster.py", "test_stream.py", "test_families_e2e.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def ray_local():
    """One Ray instance for every test that needs it (starting Ray costs seconds).

    6 logical CPUs on a 2-core machine: 2 Ray Train workers (or two 1-worker Tune trials) plus room for
    Ray Data's read tasks, and for the placement groups a finished trainer releases only lazily.
    """
    import ray

    from deepgen.orchestrate import start_local_ray

    if not ray.is_initialized():  # tried again where a loaded machine makes its node miss Ray's 30 s wait
        start_local_ray(num_cpus=6, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def bars_npy(tmp_path: Path) -> tuple[Path, Path]:
    source = bars_source(tmp_path, 400, seed=1)
    return Path(source["path"]), Path(source["labels"])


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    """A prepared small pipeline and a fresh SQLite MLflow store: (spec, manifest, MlflowClient)."""
    from mlflow.tracking import MlflowClient

    from deepgen import tracking
    from deepgen.config import PipelineSpec
    from deepgen.data.prepare import prepare_dataset

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"))
    uri = tracking.configure(spec.runs_dir)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    return spec, manifest, MlflowClient(uri, uri)

