"""Per-epoch tracking against a real `mlflow server` that goes away mid-run (no Ray: the loop's LocalEnv)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import write_pipeline
from mlflow.tracking import MlflowClient

from deepgen import orchestrate, tracking
from deepgen.config import PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.train.env import LocalEnv
from deepgen.train.loop import train_loop

pytestmark = pytest.mark.slow  # each test waits out a server outage over several epochs


class Server:
    """`mlflow server --workers 1` on a free port, in a process group of its own (stopped by its id)."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.proc = root, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()  # no server left behind by a start that timed out
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # a server still starting may not answer SIGTERM
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server")
    s.root.mkdir()
    s.start()
    yield s
    s.stop()


def test_a_run_goes_on_and_registers_while_the_tracking_server_is_away_for_epochs(server, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own backoff would wait minutes
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml", train={"epochs": 3, "batch_size": 64}))
    tracking.configure(spec.runs_dir)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    run_id = orchestrate.start_run(spec, manifest)
    logger = tracking.EpochLogger(run_id, server.uri)  # what rank 0 builds

    def on_epoch(metrics):
        if metrics["epoch"] == 3:
            server.start()  # back after epoch 2 was tried and given up
        logger(metrics)
        if metrics["epoch"] == 1:
            server.stop()

    checkpoints = tmp_path / "ckpt"
    history = train_loop(spec, manifest, LocalEnv(spec.data_dir, spec.anomaly, checkpoints), on_epoch=on_epoch)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "MLflow did not answer 3 times, could not log epoch 2" in warnings[0]
    c = MlflowClient(server.uri)
    assert sorted(m.step for m in c.get_metric_history(run_id, "train_loss")) == [1, 2, 3]  # 2 sent late

    ev, models, task = orchestrate.evaluate(spec, manifest, sorted(checkpoints.glob("checkpoint_*"))[-1])
    reg = orchestrate.register(spec, manifest, ev, models, task, run_id)
    assert (reg.version, reg.alias) == ("1", "champion")
    assert str(c.get_model_version_by_alias("t-model", "champion").version) == "1"


@pytest.mark.ray
def test_a_ray_train_run_with_no_restarts_survives_the_server_going_away(server, tmp_path, monkeypatch, ray_local,
                                                                          capfd):
    """The failure this guards: rank 0's epoch log raised into the worker, and with max_failures 0 the run
    was lost. Here the server stops after epoch 1 and comes back some seconds later, during training."""
    import threading

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    spec = PipelineSpec.from_yaml(write_pipeline(
        tmp_path / "p.yaml", train={"epochs": 8, "batch_size": 64, "max_failures": 0}))
    tracking.configure(spec.runs_dir)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    run_id = orchestrate.start_run(spec, manifest)
    c = MlflowClient(server.uri)
    outage = {}

    def take_the_server_away():  # once epoch 1 is logged: stopped, then back 5 s later
        while not c.get_metric_history(run_id, "train_loss"):
            time.sleep(0.1)
        server.stop()
        outage["stopped"] = time.time()
        time.sleep(5)
        server.start()
        outage["back"] = time.time()

    helper = threading.Thread(target=take_the_server_away, daemon=True)
    helper.start()
    with tracking.finishing(run_id):
        checkpoint = orchestrate.train(spec, manifest, run_id, server.uri)  # raised TrainingError before
        helper.join(120)
        try:
            ev, models, task = orchestrate.evaluate(spec, manifest, checkpoint)
        finally:
            shutil.rmtree(checkpoint, ignore_errors=True)  # train()'s local copy
        reg = orchestrate.register(spec, manifest, ev, models, task, run_id)
    assert "stopped" in outage and "back" in outage
    assert "MLflow did not answer 3 times" in capfd.readouterr().out  # rank 0's warning, through Ray's log
    assert ev.history[-1]["epoch"] == 8 and (reg.version, reg.alias) == ("1", "champion")
    assert 1 in {m.step for m in c.get_metric_history(run_id, "train_loss")}
