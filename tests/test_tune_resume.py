"""A sweep whose driver is killed mid-sweep resumes when the same command runs again: a real `deepgen tune`
process killed with SIGKILL (driver and its local Ray), then the same command to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import bars_source, write_pipeline
from mlflow.tracking import MlflowClient

from deepgen.config import PipelineSpec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_killed_sweep_resumes_its_trials_and_mlflow_runs_when_rerun(tmp_path):
    pipeline = write_pipeline(
        tmp_path / "sweep.yaml", name="sweep", data={"source": bars_source(tmp_path, 200, seed=3)},
        model={"kind": "dense_autoencoder", "hidden": [16], "latent_dim": 4, "loss": "mse"},
        train={"epochs": 3, "batch_size": 32}, scaling={"num_workers": 1}, anomaly={"normal_labels": [0]},
        registry={"model_name": "sweep-model"},
        tune={"search_space": {"train.lr": {"type": "grid", "values": [0.01, 0.003]}}, "num_samples": 1,
              "max_concurrent_trials": 1, "metric": "val_loss", "mode": "min", "scheduler": None})
    spec = PipelineSpec.from_yaml(pipeline)
    storage = Path(spec.storage_path)
    sweep = f"sweep-sweep-{spec.spec_hash()}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "deepgen.cli", "tune", str(pipeline)]

    first = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                             stdout=open(tmp_path / "first.log", "w"), stderr=subprocess.STDOUT)
    try:  # killed once the sweep's state is saved and its first trial has checkpointed an epoch
        started_at = time.monotonic()  # a hang guard: 55 s on a quiet 2-core machine
        while not (list((storage / sweep).glob("experiment_state-*.json"))
                   and list(storage.glob(f"{sweep}-*/checkpoint_*"))):
            assert first.poll() is None, _tails(tmp_path, spec)
            assert time.monotonic() - started_at < 600, "no checkpoint after 600 s\n" + _tails(tmp_path, spec)
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, as a lost machine would
        first.wait(60)
    started = {p.name.removeprefix(f"{sweep}-") for p in storage.glob(f"{sweep}-*") if p.is_dir()}

    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=500)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"tune: resuming sweep {sweep}" in again.stdout

    uri = f"sqlite:///{spec.runs_dir / 'mlflow.db'}"
    c = MlflowClient(uri, uri)
    runs = c.search_runs([c.get_experiment_by_name("sweep").experiment_id])
    parents = [r for r in runs if r.data.tags.get("deepgen.sweep") == "1"]
    children = [r for r in runs if "deepgen.trial" in r.data.tags]
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    trials = sorted(r.data.tags["deepgen.trial"] for r in children)
    assert len(trials) == 2 and len(set(trials)) == 2 and started <= set(trials)  # the same trials, not new ones
    for child in children:  # every epoch logged once, the resumed trial's too
        assert sorted(m.step for m in c.get_metric_history(child.info.run_id, "train_loss")) == [1, 2, 3]
    assert str(c.get_model_version_by_alias("sweep-model", "champion").version) == "1"


def _tails(tmp_path: Path, spec: PipelineSpec) -> str:
    """The ends of the killed driver's output and of its Ray and MLflow log, to say where it stood."""
    logs = sorted((spec.runs_dir / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    parts = [("driver", tmp_path / "first.log")] + [("ray/mlflow log", p) for p in logs[-1:]]
    return "\n".join(f"--- {name} (last 3000 characters)\n{p.read_text(errors='replace')[-3000:]}"
                      for name, p in parts if p.exists())
