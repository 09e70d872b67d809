"""One run name runs in one process at a time: two real `deepgen run` processes of the same run name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import write_pipeline

from deepgen.config import PipelineSpec
from deepgen.locks import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_run_of_a_running_run_name_stops_in_one_line_naming_the_first(tmp_path):
    pipeline = write_pipeline(tmp_path / "p.yaml")
    spec = PipelineSpec.from_yaml(pipeline)
    lock = Path(spec.storage_path) / spec.run_name / LOCK_FILE
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "deepgen.cli", "run", str(pipeline)]
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text().startswith(f"pid {first.pid} ")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # still running: the second did not wait for it, nor disturb it
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: it ends its run and its local Ray
        first.wait(120)
    assert second.returncode == 1  # busy: a failure at run time, not a usage error
    assert second.stderr.strip().splitlines() == [
        f"deepgen: error: run {spec.run_name} is already running ({lock.read_text()}); wait for it to end or "
        f"stop it (lock {lock})"]
