"""`deepgen` in a script: exit statuses (2 usage and spec, 1 run time, 0 done), --json as one object on stdout,
--version, the environment variables in --help, and how it reaches a Ray cluster (address forms, tokens).
Each runs the installed command in a subprocess, as a script would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import deepgen

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "pipelines/quickstart.yaml")
RAY_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
            "MLFLOW_TRACKING_URI")


def _deepgen(*args, cwd, **env):
    clean = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    return subprocess.run([sys.executable, "-m", "deepgen.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**clean, **env}, timeout=120)


def test_version(tmp_path):
    out = _deepgen("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"deepgen {deepgen.__version__}"


@pytest.mark.parametrize("args, status", [
    (["run"], 2),  # a missing argument
    (["run", QUICKSTART, "--sett", "x"], 2),  # a typo in a flag
    (["run", QUICKSTART, "--set", "train.epochs=0"], 2),  # a spec error
    (["run", "nope.yaml"], 2),
    (["score", "--model", "nope@champion", "--input", "rows.npy", "--output", "s.parquet"], 1),  # the registry
    (["models", "show", "nope@champion"], 1),
])
def test_usage_and_spec_errors_exit_2_failures_at_run_time_exit_1(tmp_path, args, status):
    out = _deepgen(*args, cwd=tmp_path)
    assert out.returncode == status, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("deepgen: error: ")
    assert "Traceback" not in out.stderr


def test_json_failure_is_one_object_on_stdout_and_one_line_on_stderr(tmp_path):
    out = _deepgen("score", "--model", "nope@champion", "--input", "rows.npy", "--output", "s.parquet", "--json",
                   "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 1
    info = json.loads(out.stdout)  # the whole of stdout is one object
    assert info["exit_status"] == 1 and info["error"].startswith("nope@champion: ")
    assert out.stderr.strip().splitlines()[-1] == f"deepgen: error: {info['error']}"


def test_json_spec_error_exits_2_with_the_error_object(tmp_path):
    out = _deepgen("run", QUICKSTART, "--set", "train.epochs=0", "--json", cwd=tmp_path)
    assert out.returncode == 2
    assert json.loads(out.stdout) == {"error": f"{QUICKSTART}: train.epochs: Input should be greater than 0",
                                      "exit_status": 2}


@pytest.mark.parametrize("command", [["run", QUICKSTART], ["tune", QUICKSTART], ["score"], ["sample"], ["upscale"],
                                     ["submit", QUICKSTART]])
def test_the_commands_that_report_a_result_take_json(command):
    from deepgen.cli import build_parser

    required = {"score": ["--model", "m", "--input", "i", "--output", "o"], "sample": ["--model", "m", "--out", "o"],
                "upscale": ["--model", "m", "--input", "i", "--output", "o"]}.get(command[0], [])
    args = build_parser().parse_args([*command, *required, "--json"])
    assert args.json and args.json_result


def test_help_lists_every_environment_variable_deepgen_reads(tmp_path):
    read = set()
    for path in (ROOT / "deepgen").rglob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r"environ(?:\.get)?[\[(]\s*\"([A-Z][A-Z0-9_]+)\"", text))
        read |= set(re.findall(r"getenv\(\s*\"([A-Z][A-Z0-9_]+)\"", text))
    from deepgen.submission import MLFLOW_CREDENTIALS
    from deepgen.tracking import GIT_COMMIT_ENV

    read |= {*MLFLOW_CREDENTIALS, GIT_COMMIT_ENV, "RAY_AUTH_TOKEN_PATH"}
    assert {"MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DEEPGEN_USER"} <= read  # the scan finds what it should
    out = _deepgen("--help", cwd=tmp_path)
    assert out.returncode == 0
    missing = sorted(v for v in read if v not in out.stdout)
    assert not missing, f"read by deepgen but not in --help: {missing}"
    assert "exit status: 0 done; 2 a usage or spec error" in out.stdout


def test_an_http_ray_address_is_refused_before_any_work_naming_the_variable(tmp_path):
    out = _deepgen("run", QUICKSTART, cwd=tmp_path, RAY_ADDRESS="http://127.0.0.1:8265")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("deepgen: error: RAY_ADDRESS=http://127.0.0.1:8265 is the Ray job API")
    assert "RAY_ADDRESS=HOST:6379" in line and "deepgen submit" in line
    assert not (tmp_path / "deepgen-runs").exists()


# --- a cluster with token authentication -------------------------------------------------------------


class _TokenJobAPI(BaseHTTPRequestHandler):
    """The two requests `deepgen jobs list` makes of Ray's job API, answered only with the right bearer token,
    as a cluster started with RAY_AUTH_MODE=token answers them."""

    token = "s3cret-token"

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(401, {"error": "Unauthorized: missing or invalid token"})
        if self.path.startswith("/api/version"):
            import ray

            return self._send(200, {"version": "4", "ray_version": ray.__version__, "ray_commit": "x"})
        if self.path.startswith("/api/jobs"):
            return self._send(200, [])
        return self._send(404, {})

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def token_cluster():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenJobAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_token_cluster_gets_the_token_of_the_token_file(tmp_path, token_cluster):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(_TokenJobAPI.token + "\n")
    out = _deepgen("jobs", "list", "--address", token_cluster, "--json", cwd=tmp_path, HOME=str(home))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_a_token_cluster_without_a_token_is_one_line_saying_what_to_set(tmp_path, token_cluster):
    home = tmp_path / "home"
    home.mkdir()
    out = _deepgen("jobs", "list", "--address", token_cluster, cwd=tmp_path, HOME=str(home))
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert line == (f"deepgen: error: the Ray cluster at {token_cluster} wants a token: set RAY_AUTH_TOKEN, or "
                    "RAY_AUTH_TOKEN_PATH to its file, or copy it to ~/.ray/auth_token (`ray get-auth-token` on the "
                    "head node)")


def test_a_wrong_token_is_named_with_where_it_came_from(tmp_path, token_cluster):
    out = _deepgen("jobs", "list", "--address", token_cluster, cwd=tmp_path, HOME=str(tmp_path),
                   RAY_AUTH_TOKEN="wrong")
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert "refused the token from RAY_AUTH_TOKEN" in line
