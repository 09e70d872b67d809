"""Shared fixtures: one local Ray instance for the whole session, generated data, temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def ray_local():
    """One Ray instance for every test that needs it (starting Ray costs seconds).

    6 logical CPUs on a 2-core machine: 2 Ray Train workers (or two 1-worker Tune trials) plus room for
    Ray Data's read tasks, and for the placement groups a finished trainer releases only lazily.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=6, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    yield ray
    ray.shutdown()


def bar_images(n: int, seed: int, anomaly_fraction: float = 0.2, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 images: label 0 = a horizontal bar, label 1 = a vertical bar (the anomaly)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < anomaly_fraction).astype(np.int64)
    images = rng.integers(0, 40, size=(n, size, size)).astype(np.float32)
    pos = rng.integers(1, size - 1, size=n)
    for i in range(n):
        if labels[i] == 0:
            images[i, pos[i], :] = 255
        else:
            images[i, :, pos[i]] = 255
    return images.astype(np.uint8), labels


def bars_source(root: Path, n: int, seed: int) -> dict:
    """`n` bar images and their labels written to ROOT/x.npy and ROOT/y.npy: the pipeline's npy source."""
    x, y = bar_images(n, seed=seed)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    return {"kind": "npy", "path": str(root / "x.npy"), "labels": str(root / "y.npy")}


@pytest.fixture
def bars_npy(tmp_path: Path) -> tuple[Path, Path]:
    source = bars_source(tmp_path, 400, seed=1)
    return Path(source["path"]), Path(source["labels"])


def write_pipeline(path: Path, **sections) -> Path:
    """A small valid pipeline spec; keyword sections replace the defaults."""
    spec = {
        "name": "t",
        "data": {"source": {"kind": "digits"}},
        "model": {"kind": "dense_autoencoder", "hidden": [16], "latent_dim": 4},
        "train": {"epochs": 2, "batch_size": 32},
        "scaling": {"num_workers": 1},
        "anomaly": {"anomalous_labels": [9]},
        "registry": {"model_name": "t-model"},
        "tracking": {"runs_dir": str(path.parent / "runs")},
    }
    spec.update(sections)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


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


def race(monkeypatch, out: Path, other_prepare) -> None:
    """Make `other_prepare()` (another process preparing `out`) swap its copy in just before this one does."""
    real_rename, pending = Path.rename, [other_prepare]

    def rename(self, target):
        if pending and Path(target) == out:
            pending.pop()()  # its own rename into `out` finds `pending` empty and goes through
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
