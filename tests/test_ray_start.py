"""A local Ray whose node is slow to start: Ray waits a fixed 30 s for the raylet, which a loaded machine can
miss. deepgen tries again, and first stops what the failed start left running.

The timeout itself cannot be produced on demand, so it is injected: the patched `ray.init` starts a real
child process (standing in for the GCS and raylet a failed start leaves behind) and raises Ray's own error;
the later tries go to the real `ray.init`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ray  # noqa: F401 - puts the psutil that Ray ships on the path

# isort: split
import psutil

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, subprocess, sys
import ray
from deepgen import orchestrate
from deepgen.errors import DeepgenError

fail_times = int(sys.argv[1])
real_init, leftovers = ray.init, []

def init(*args, **kwargs):
    if len(leftovers) < fail_times:
        leftovers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")
    return real_init(*args, **kwargs)

ray.init = init
try:
    orchestrate.ensure_ray()
    outcome = {"cpus": ray.cluster_resources().get("CPU")}
except DeepgenError as e:
    outcome = {"error": str(e)}
print(json.dumps({"leftovers": leftovers, **outcome}))
"""


def drive(fail_times: int) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", DRIVER, str(fail_times)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    *screen, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(screen)


def test_a_start_that_timed_out_is_tried_again_after_its_leftovers_are_stopped():
    outcome, screen = drive(fail_times=1)
    assert outcome.get("cpus", 0) >= 1, outcome  # the second try started a real Ray
    assert "trying again (2 of 3)" in screen
    assert not psutil.pid_exists(outcome["leftovers"][0]) or \
        psutil.Process(outcome["leftovers"][0]).status() == psutil.STATUS_ZOMBIE


def test_three_timeouts_end_in_one_line_that_says_what_to_do_and_leave_nothing_running():
    outcome, screen = drive(fail_times=3)
    assert len(outcome["leftovers"]) == 3
    assert "\n" not in outcome["error"]
    assert outcome["error"].startswith("could not start a local Ray: The current node timed out")
    assert "failed 3 times" in outcome["error"] and "try again when it is quieter" in outcome["error"]
    assert "trying again (3 of 3)" in screen
    for pid in outcome["leftovers"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
