"""A calm screen: deepgen's own lines on the screen, Ray's and MLflow's in a log file under the runs folder
(its path printed first); -v brings them back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prepare(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "deepgen.cli", "prepare", str(ROOT / "pipelines/quickstart.yaml"),
                           "--set", f"tracking.runs_dir={tmp_path / 'runs'}", *flags],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_only_deepgens_lines_reach_the_screen_and_the_rest_goes_to_the_printed_log(tmp_path):
    out = _prepare(tmp_path)
    assert out.returncode == 0, out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert all(line.startswith(("[deepgen] ", "dataset: ")) for line in lines), lines
    first = lines[0]
    assert first.startswith("[deepgen] Ray's and MLflow's own lines go to ") and first.endswith("(-v shows them here)")
    log = Path(first.split(" go to ")[1].split(" (-v")[0])
    assert log.parent == tmp_path / "runs" / "logs" and log.is_file()
    assert "Started a local Ray instance" in log.read_text()  # Ray's own line, kept
    assert "[deepgen] prepare: reading digits source" in lines


def test_verbose_shows_rays_lines_and_writes_no_log(tmp_path):
    out = _prepare(tmp_path, "-v")
    assert out.returncode == 0, out.stderr
    assert "Started a local Ray instance" in out.stdout + out.stderr
    assert not (tmp_path / "runs" / "logs").exists()


def test_json_keeps_stdout_for_the_one_object_while_the_screen_is_calm(tmp_path):
    out = _prepare(tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)  # all of stdout
    assert info["rows"] == {"train": 1078, "val": 270, "test": 449}  # the bundled digits, split by the defaults
    assert Path(info["dataset"]).parent == tmp_path / "runs" / "data"
    assert all(line.startswith("[deepgen] ") for line in out.stderr.strip().splitlines()), out.stderr


def test_on_a_terminal_a_step_shows_its_time_and_training_a_bar_of_the_epochs():
    import io
    import time

    from deepgen.console import _Ticker

    screen = io.StringIO()
    ticker = _Ticker(screen)
    try:
        ticker.line("[deepgen] epoch 3/10 train_loss=0.1")
        time.sleep(4.5)
    finally:
        ticker.close()
    text = screen.getvalue()
    assert text.startswith("[deepgen] epoch 3/10 train_loss=0.1\n")
    assert "[#########.....................] 3/10 epochs, this one 0:0" in text
    assert text.endswith("\r\033[K")  # the status line is cleared before the next line or the end
