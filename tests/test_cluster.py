"""Against real processes: a `ray start --head` cluster and an `mlflow server`, both started here on free
local ports and stopped here by PID. Submission through the job API, lookup and scoring from fresh
processes against the server, idempotency per schedule slot, and recovery from a killed Ray Train worker
and from a killed driver. One cluster and one tracking server serve the whole module.

Every Ray call goes through a subprocess with an explicit environment (token auth with a token made
here, never written to ~/.ray), so the in-process Ray instance other modules share is never touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from deepgen import cluster as dc
from deepgen import jobs_api, submission
from deepgen.cli import cluster as cluster_commands

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SLOT = "2026-11-27T03:00Z"
QUICK = ["--set", "train.epochs=2", "--set", "scaling.num_workers=1", "--set", "model.hidden=[16]",
         "--set", "model.latent_dim=4"]
MARKER_VAR = "DEEPGEN_TEST_CLUSTER"


# --- processes ---------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_range(size: int, avoid: list[int]) -> int:
    """The first port of `size` consecutive free ports (for Ray's worker ports), below the kernel's
    ephemeral range when it can (free_ports draws from that range) and never covering `avoid`: Ray
    refuses to start when a component's port falls inside the worker range."""
    low = _ephemeral_low()
    rng = np.random.default_rng()
    for _ in range(50):
        base = int(rng.integers(10000, max(low, 10000 + 2 * size) - size))
        if any(base <= p < base + size for p in avoid):
            continue
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range for Ray workers")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def our_pids(marker: str) -> list[int]:
    """Processes of this module's cluster and only those: started with our marker in their environment
    (drivers, the servers, most of Ray), or holding a file or folder under the cluster's temp dir (Ray
    processes whose environment setproctitle has overwritten, e.g. the dashboard and runtime-env agents)."""
    found = []
    needle = f"{MARKER_VAR}={marker}".encode()
    temp = str(ray_temp_dir(marker))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
                continue
            links = [entry / "cwd", *(entry / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            try:
                if os.readlink(link).startswith(temp):
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


def ray_temp_dir(marker: str) -> Path:
    return Path("/tmp") / f"dg-ray-{marker}"  # short: Ray's unix sockets live under it


def kill_ours(marker: str, grace_s: float = 5) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in our_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while our_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.3)
    assert not our_pids(marker), "processes left behind"


def wait_http(url: str, headers: dict, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # `ray start --block` and `mlflow server` stay up
            raise RuntimeError(f"{proc.args[:2]} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout_s}s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    marker = secrets.token_hex(8)
    token = secrets.token_hex(32)
    ports = free_ports(10)
    gcs, dash, client, node_mgr, obj_mgr, agent, agent_grpc, metrics, renv_agent, mlflow_port = ports
    workers = free_range(200, avoid=ports)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_")) and k not in ("PYTEST_CURRENT_TEST",)}
    env.update({
        MARKER_VAR: marker, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,   # token auth, with a token of our own
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONUNBUFFERED": "1",
    })
    temp_dir = ray_temp_dir(marker)
    ray_log, mlflow_log = root / "ray-start.log", root / "mlflow-server.log"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
             "--node-ip-address", "127.0.0.1", "--port", str(gcs),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--ray-client-server-port", str(client), "--node-manager-port", str(node_mgr),
             "--object-manager-port", str(obj_mgr), "--dashboard-agent-listen-port", str(agent),
             "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
             "--runtime-env-agent-port", str(renv_agent),
             "--min-worker-port", str(workers), "--max-worker-port", str(workers + 199),
             "--num-cpus", "4", "--object-store-memory", str(300 * 2**20), "--temp-dir", str(temp_dir)],
            env=env, stdout=ray_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=root))
        procs.append(subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--workers", "1"],
            env=env, stdout=mlflow_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=root))
        address = f"http://127.0.0.1:{dash}"
        tracking = f"http://127.0.0.1:{mlflow_port}"
        started = time.monotonic()
        wait_http(f"{address}/api/version", {"Authorization": f"Bearer {token}"}, 120, procs[0], ray_log)
        wait_http(f"{tracking}/health", {}, 120, procs[1], mlflow_log)
        print(f"cluster and tracking server up in {time.monotonic() - started:.1f}s")
        yield {"root": root, "address": address, "gcs": f"127.0.0.1:{gcs}", "tracking": tracking,
               "env": {**env, "MLFLOW_TRACKING_URI": tracking}, "storage": root / "storage", "marker": marker}
    finally:
        # SIGTERM to every process of ours at once (the two parents, everything Ray started, any driver a
        # test left), SIGKILL to what is left after a grace period; `ray stop` would stop every Ray on the
        # machine, the shared in-process instance of other modules included.
        kill_ours(marker)
        for p in procs:
            p.wait(timeout=10)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # belt and braces: nothing may be left in their groups
            except ProcessLookupError:
                pass
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


class Proc:
    """A subprocess in its own process group; its output is kept line by line with the seconds since
    start at which each line came, and written to `log` as it comes (for diagnosis)."""

    def __init__(self, args: list[str], env: dict, log: Path, cwd: Path = ROOT, merge: bool = True):
        self.args, self.log = args, log
        self.lines: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        with log.open("a") as f:
            f.write(f"$ {' '.join(map(str, args))}\n")
        self.p = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1,
                                  stderr=subprocess.STDOUT if merge else log.open("a"), start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.log.open("a") as f:
            for line in self.p.stdout:
                t = time.monotonic() - self.t0
                self.lines.append((t, line))
                f.write(f"{t:7.1f} {line}")
                f.flush()

    @property
    def out(self) -> str:
        return "".join(line for _, line in self.lines)

    def when(self, pattern: str) -> float | None:
        return next((t for t, line in self.lines if re.search(pattern, line)), None)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.args[:3]} still running after {timeout}s:\n{self.out[-4000:]}") from None
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(timeout=30)


def run(args: list[str], env: dict, log: Path, timeout: float = 300, check: bool = True, cwd: Path = ROOT,
        merge: bool = True) -> Proc:
    proc = Proc(args, env, log, cwd=cwd, merge=merge)
    rc = proc.wait(timeout)
    if check and rc != 0:
        raise AssertionError(f"{args[:3]} exited {rc}:\n{proc.out[-6000:]}")
    proc.returncode = rc
    return proc


def deepgen(c, *args: str, env: dict | None = None, **kw) -> Proc:
    return run([str(BIN / "deepgen"), *args], env=env or c["env"], log=c["root"] / "commands.log", **kw)


def client(c):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=c["tracking"], registry_uri=c["tracking"])


def jobs(c) -> list[dict]:
    return json.loads(deepgen(c, "jobs", "list", "--address", c["address"], "--json", merge=False).out)


# --- without a cluster: ids, the retry decision, what the job gets ------------------------------------


class FakeJobs:
    """The part of JobSubmissionClient that `deepgen submit` uses, with jobs in given states."""

    def __init__(self, states: dict[str, str]):
        self.states = dict(states)
        self.submitted: list[dict] = []

    def get_job_info(self, job_id):
        if job_id not in self.states:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        from types import SimpleNamespace

        return SimpleNamespace(status=self.states[job_id], message="", submission_id=job_id)

    def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata):
        wd = Path(runtime_env["working_dir"])
        files = {str(p.relative_to(wd)) for p in wd.rglob("*") if p.is_file()}
        self.submitted.append({"entrypoint": entrypoint, "id": submission_id, "env": runtime_env,
                               "metadata": metadata, "files": files,
                               "spec": yaml.safe_load((wd / entrypoint.split()[2]).read_text())})
        self.states[submission_id] = "PENDING"
        return submission_id


@pytest.mark.parametrize("command", [["list"], ["status", "deepgen-x"], ["logs", "deepgen-x"], ["stop", "deepgen-x"]])
def test_a_job_api_that_fails_midway_is_one_line_naming_it(command, monkeypatch, capsys):
    from deepgen import cli

    class Failing(FakeJobs):
        def list_jobs(self):
            raise RuntimeError("Request failed with status code 502: Bad Gateway")

        def get_job_info(self, job_id):
            raise ConnectionError("Connection aborted.")  # what requests raises when the head goes away

    monkeypatch.setattr(cluster_commands, "connect", lambda address: Failing({}))
    assert cli.main(["jobs", *command, "--address", "http://h:8265"]) == 1  # a failure at run time
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("deepgen: error: the Ray job API at http://h:8265: ")


def test_submission_ids_are_deterministic_per_run_and_slot():
    spec = submission.load_spec(ROOT / "pipelines/quickstart.yaml")
    assert submission.slot_tag("2026-11-27T03:00Z") == "20261127T0300Z"
    assert submission.scheduled_run_name(spec, SLOT) == f"quickstart-{spec.spec_hash()}-20261127T0300Z"
    assert jobs_api.submission_id(spec.run_name) == f"deepgen-quickstart-{spec.spec_hash()}"
    assert jobs_api.submission_id("a b/c", 2) == "deepgen-a-b-c-retry2"
    assert submission.entrypoint("deepgen-submit/q.yaml", None) == "python jobs/run_pipeline.py deepgen-submit/q.yaml"
    assert submission.entrypoint("deepgen-submit/q.yaml", SLOT) \
        == f"python jobs/retrain.py deepgen-submit/q.yaml --slot {SLOT}"
    other = submission.load_spec(ROOT / "pipelines/quickstart.yaml", ["train.lr=0.01"])
    assert other.run_name != spec.run_name  # another spec, another run and job
    same = submission.load_spec(ROOT / "pipelines/quickstart.yaml", ["scaling.num_workers=1"], storage="s3://b/x")
    assert same.run_name == spec.run_name   # where and how wide it runs does not make it another run


@pytest.mark.parametrize("states, action, job_id", [
    ({}, "submit", "deepgen-r"),
    ({"deepgen-r": "PENDING"}, "exists", "deepgen-r"),
    ({"deepgen-r": "RUNNING"}, "exists", "deepgen-r"),
    ({"deepgen-r": "SUCCEEDED"}, "exists", "deepgen-r"),
    ({"deepgen-r": "FAILED"}, "retry", "deepgen-r-retry1"),
    ({"deepgen-r": "STOPPED", "deepgen-r-retry1": "FAILED"}, "retry", "deepgen-r-retry2"),
    ({"deepgen-r": "FAILED", "deepgen-r-retry1": "RUNNING"}, "exists", "deepgen-r-retry1"),
    ({"deepgen-r": "FAILED", "deepgen-r-retry1": "SUCCEEDED"}, "exists", "deepgen-r-retry1"),
])
def test_a_run_is_submitted_once_and_retried_only_after_it_failed(states, action, job_id):
    assert jobs_api.plan_submission(FakeJobs(states), "r")[:2] == (action, job_id)


def test_submit_ships_the_resolved_spec_with_the_code_and_nothing_else(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "x.npy", np.zeros((10, 4), np.float32))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "rel", "data": {"source": {"kind": "npy", "path": "x.npy"}},
        "model": {"kind": "dense_autoencoder"}, "registry": {"model_name": "rel"}}))
    fake = FakeJobs({})
    monkeypatch.setattr(dc, "connect", lambda address: fake)
    monkeypatch.chdir(tmp_path)
    assert dc.submit("p.yaml", "http://h:8265", ["train.epochs=3"], tracking_uri="http://mlflow:5000",
                     storage="shared/ckpt", slot="2026-11-27T03:00Z") == 0
    [job] = fake.submitted
    spec = job["spec"]
    assert spec["data"]["source"]["path"] == str(tmp_path / "x.npy") and spec["train"]["epochs"] == 3
    assert spec["tracking"]["storage_path"] == spec["tracking"]["runs_dir"] == str(tmp_path / "shared/ckpt")
    assert job["entrypoint"] == "python jobs/retrain.py deepgen-submit/rel.yaml --slot 2026-11-27T03:00Z"
    assert job["env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and "pip" not in job["env"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert job["env"]["env_vars"]["DEEPGEN_GIT_COMMIT"] == head  # the staged copy has no .git to read it from
    assert {"deepgen/cli/__init__.py", "jobs/run_pipeline.py", "jobs/retrain.py",
            "deepgen-submit/rel.yaml"} <= job["files"]
    assert not any(f.startswith((".venv", ".git", "deepgen-runs", "tests")) or "__pycache__" in f
                   for f in job["files"])
    from deepgen.config import PipelineSpec

    shipped = PipelineSpec.validate_dict(spec)  # what the cluster loads has the run name computed here
    assert job["id"] == jobs_api.submission_id(submission.scheduled_run_name(shipped, "2026-11-27T03:00Z"))
    assert job["metadata"]["deepgen.spec_hash"] == shipped.spec_hash()
    # the run `deepgen run p.yaml` would be: the name does not depend on where the data path resolves
    local_name = submission.load_spec("p.yaml", ["train.epochs=3"]).run_name
    assert job["id"] == jobs_api.submission_id(submission.scheduled_run_name(shipped, "2026-11-27T03:00Z")) \
        == jobs_api.submission_id(f"{local_name}-20261127T0300Z")
    # the same slot again: recognised, nothing submitted; after a failure: a retry with a suffix
    assert dc.submit("p.yaml", "http://h:8265", ["train.epochs=3"], storage="shared/ckpt",
                     slot="2026-11-27T03:00Z") == 0
    assert len(fake.submitted) == 1 and "already PENDING" in capsys.readouterr().out
    fake.states[job["id"]] = "FAILED"
    dc.submit("p.yaml", "http://h:8265", ["train.epochs=3"], storage="shared/ckpt", slot="2026-11-27T03:00Z")
    assert [j["id"] for j in fake.submitted] == [job["id"], job["id"] + "-retry1"]
    assert "retrying as" in capsys.readouterr().out
    # the same pipeline from another checkout (its own copy of the data): the same run, nothing new
    other = tmp_path / "other-checkout"
    other.mkdir()
    for name in ("p.yaml", "x.npy"):
        shutil.copy(tmp_path / name, other / name)
    monkeypatch.chdir(other)
    dc.submit("p.yaml", "http://h:8265", ["train.epochs=3"], storage="shared/ckpt", slot="2026-11-27T03:00Z")
    assert len(fake.submitted) == 2 and "already PENDING" in capsys.readouterr().out


def test_submit_pins_a_pretrained_alias_to_its_version_so_a_moved_alias_is_a_new_run(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from deepgen import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.configure(tmp_path / "deepgen-runs")  # the local store a user without a server has
    registry = MlflowClient(uri, uri)
    registry.create_registered_model("enc")
    for _ in range(2):
        registry.create_model_version("enc", source=str(tmp_path))
    registry.set_registered_model_alias("enc", "champion", "1")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "ft", "data": {"source": {"kind": "labelled_text", "path": "t.csv"}},
        "model": {"kind": "bert_classifier", "pretrained": "enc@champion"}, "registry": {"model_name": "ft"}}))
    fake = FakeJobs({})
    monkeypatch.setattr(dc, "connect", lambda address: fake)
    dc.submit("p.yaml", "http://h:8265")
    assert fake.submitted[-1]["spec"]["model"]["pretrained"] == "enc/1"
    assert "enc@champion is enc/1" in capsys.readouterr().out
    dc.submit("p.yaml", "http://h:8265")  # the same encoder version: the same run, nothing new
    assert len(fake.submitted) == 1
    registry.set_registered_model_alias("enc", "champion", "2")
    dc.submit("p.yaml", "http://h:8265")  # the alias moved: a new run fine-tunes v2
    assert [j["spec"]["model"]["pretrained"] for j in fake.submitted] == ["enc/1", "enc/2"]
    assert fake.submitted[0]["id"] != fake.submitted[1]["id"]
    # no registry reachable from here: the alias ships as it is, and the user is told
    monkeypatch.chdir(tmp_path / "deepgen-runs")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    dc.submit(str(tmp_path / "p.yaml"), "http://h:8265")
    assert fake.submitted[-1]["spec"]["model"]["pretrained"] == "enc@champion"
    assert "not resolved here" in capsys.readouterr().out
    # a tracking server this machine cannot reach (an in-cluster name): said at once, not retried for minutes
    dc.submit(str(tmp_path / "p.yaml"), "http://h:8265", tracking_uri="http://127.0.0.1:9")
    assert "not resolved here (the registry at http://127.0.0.1:9 did not answer" in capsys.readouterr().out
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the quick lookup left nothing behind


def test_a_retrain_fine_tunes_the_encoder_the_alias_names_at_its_slot(tmp_path, monkeypatch):
    """jobs/retrain.py resolves `model.pretrained: NAME@ALIAS` when the slot starts: the encoder version is
    fetched and named in the run name, so the slot after the alias moves is a new run on the new encoder."""
    import json

    from mlflow import MlflowClient

    from deepgen import tracking
    from deepgen.data.tokenizer import TOKENIZER_FILE

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.configure(tmp_path / "deepgen-runs")
    registry = MlflowClient(uri, uri)
    registry.create_registered_model("enc")
    for v in (1, 2):  # two stand-in exported encoders: the family marker and the tokenizer are what is read
        folder = tmp_path / f"export-{v}"
        folder.mkdir()
        meta = {"family": "bert_encoder", "config": {"max_len": 32 * v}}
        (folder / "deepgen-model.json").write_text(json.dumps(meta))
        (folder / TOKENIZER_FILE).write_text(f"tokenizer of v{v}")
        registry.create_model_version("enc", source=str(folder))
    registry.set_registered_model_alias("enc", "champion", "1")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "ft", "data": {"source": {"kind": "labelled_text", "path": "t.csv"}},
        "model": {"kind": "bert_classifier", "pretrained": "enc@champion"}, "registry": {"model_name": "ft"}}))

    first = submission.scheduled_spec("p.yaml", "2026-11-26T00:00Z")
    assert Path(first.model.pretrained).name == "enc-v1"
    assert (Path(first.model.pretrained) / TOKENIZER_FILE).read_text() == "tokenizer of v1"
    assert first.data.text.max_len == 32  # rows as long as the encoder has positions for
    assert first.run_name.endswith("-20261126T0000Z")
    assert submission.scheduled_spec("p.yaml", "2026-11-26T00:00Z").run_name == first.run_name  # a rerun resumes
    registry.set_registered_model_alias("enc", "champion", "2")
    moved = submission.scheduled_spec("p.yaml", "2026-11-26T00:00Z")
    assert (Path(moved.model.pretrained) / TOKENIZER_FILE).read_text() == "tokenizer of v2"
    assert moved.data.text.max_len == 64
    assert moved.run_name != first.run_name


def test_pip_requirements_are_pinned_by_the_constraints_and_leave_ray_alone():
    reqs = submission.pip_requirements()
    assert "torch==2.13.0" in reqs and "mlflow==3.17.2" in reqs and "pyarrow==25.0.1" in reqs
    assert not any(r.lower().startswith("ray") for r in reqs)


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://head:10001", "head:8265"])
def test_an_address_that_is_not_the_job_apis_url_is_refused_at_once(address):
    with pytest.raises(jobs_api.ClusterError, match=r"the job API is an http:// URL, e.g. http://HOST:8265"):
        jobs_api.connect(address)


def test_a_bad_spec_fails_before_the_cluster_is_contacted(capsys):
    from deepgen import cli

    code = cli.main(["submit", str(ROOT / "pipelines/quickstart.yaml"), "--address", "http://127.0.0.1:9",
                     "--set", "train.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train.epochs: Input should be greater than 0" in err
    assert cli.main(["submit", str(ROOT / "pipelines/quickstart.yaml"), "--address", "http://127.0.0.1:9",
                     "--slot", "tomorrow"]) == 2
    assert "slot 'tomorrow'" in capsys.readouterr().err
    assert cli.main(["submit", str(ROOT / "pipelines/quickstart.yaml"), "--address", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the Ray job API at http://127.0.0.1:9" in capsys.readouterr().err


def test_schedule_writes_the_three_files_and_says_how_to_install_them(tmp_path, monkeypatch, capsys):
    from deepgen import cli

    monkeypatch.chdir(ROOT)
    assert cli.main(["schedule", "pipelines/quickstart.yaml", "--cron", "0 3 * * *", "--out", str(tmp_path),
                     "--storage", "/app/deepgen-runs/ray", "--set", "train.epochs=5"]) == 0
    out = capsys.readouterr().out
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["quickstart.cronjob.yaml", "quickstart.crontab", "quickstart.raycronjob.yaml"]
    assert out.count("kubectl apply -f") == 2 and "| crontab -" in out
    rcj = yaml.safe_load((tmp_path / "quickstart.raycronjob.yaml").read_text())
    assert rcj["spec"]["jobTemplate"]["entrypoint"].startswith("python jobs/retrain.py pipelines/quickstart.yaml")
    assert "--set train.epochs=5" in rcj["spec"]["jobTemplate"]["entrypoint"]
    assert cli.main(["schedule", "pipelines/quickstart.yaml", "--cron", "0 25 * * *", "--out", str(tmp_path)]) == 2
    assert "hour field" in capsys.readouterr().err


def test_the_crontab_line_runs_from_any_folder_with_its_own_storage(tmp_path, monkeypatch, capsys):
    """Written from outside the checkout: the line runs where it was written (the pipeline's relative
    paths), with this interpreter and the checkout's jobs/retrain.py; --storage stays the cluster's."""
    import shlex

    from deepgen import cli

    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli.main(["schedule", str(ROOT / "pipelines/quickstart.yaml"), "--cron", "0 3 * * *", "--out", "s",
                     "--storage", "/app/deepgen-runs/ray", "--crontab-storage", "ckpt"]) == 0
    [line] = [ln for ln in (here / "s/quickstart.crontab").read_text().splitlines() if not ln.startswith("#")]
    words = shlex.split(line.split(" ", 5)[5])  # cd HERE && mkdir -p LOGS && PYTHON ENTRY PIPELINE ...
    assert words[:3] == ["cd", str(here), "&&"]
    python, entry = words[words.index("mkdir") + 4:][:2]
    assert Path(python).is_file() and Path(entry) == ROOT / "jobs/retrain.py"
    assert words[words.index("--storage") + 1] == "ckpt" and "/app/deepgen-runs/ray" not in line
    rcj = yaml.safe_load((here / "s/quickstart.raycronjob.yaml").read_text())
    assert "--storage /app/deepgen-runs/ray" in rcj["spec"]["jobTemplate"]["entrypoint"]


def test_the_retrain_entry_needs_a_slot_or_a_cron(capsys):
    with pytest.raises(SystemExit):
        cluster_commands.retrain_main(["pipelines/quickstart.yaml"])
    assert "--slot" in capsys.readouterr().err
    assert cluster_commands.retrain_main([str(ROOT / "pipelines/quickstart.yaml"), "--cron", "61 * * * *"]) == 2
    assert "minute field" in capsys.readouterr().err


# --- submit, look up, score, submit again --------------------------------------------------------------


@pytest.fixture(scope="module")
def submitted(cluster):
    c = cluster
    args = ["submit", "pipelines/quickstart.yaml", "--address", c["address"], "--tracking-uri", c["tracking"],
            "--storage", str(c["storage"]), "--slot", SLOT, "--wait", *QUICK]
    started = time.monotonic()
    first = deepgen(c, *args, timeout=420)
    took = time.monotonic() - started
    spec = submission.load_spec(ROOT / "pipelines/quickstart.yaml", QUICK[1::2], str(c["storage"]))
    return {"args": args, "out": first.out, "took": took, "run_name": submission.scheduled_run_name(spec, SLOT),
            "model": spec.registry.model_name, "experiment": spec.experiment}


def test_submitted_pipeline_ran_as_a_job_and_logged_to_the_server(cluster, submitted):
    print(f"deepgen submit --wait took {submitted['took']:.1f}s")
    [job] = jobs(cluster)
    assert job["submission_id"] == f"deepgen-{submitted['run_name']}" == jobs_api.submission_id(submitted["run_name"])
    assert job["status"] == "SUCCEEDED"
    assert job["entrypoint"].startswith("python jobs/retrain.py deepgen-submit/quickstart.yaml --slot")
    assert job["metadata"]["deepgen.slot"] == SLOT
    assert f"submitted {job['submission_id']}" in submitted["out"]
    status = json.loads(deepgen(cluster, "jobs", "status", job["submission_id"], "--address", cluster["address"],
                                "--json", merge=False).out)
    assert status["status"] == "SUCCEEDED" and status["metadata"]["deepgen.run_name"] == submitted["run_name"]
    logs = deepgen(cluster, "jobs", "logs", job["submission_id"], "--address", cluster["address"]).out
    assert "Pipeline quickstart done" in logs
    stop = deepgen(cluster, "jobs", "stop", job["submission_id"], "--address", cluster["address"]).out
    assert "already SUCCEEDED; nothing to stop" in stop
    assert "SUCCEEDED" in submitted["out"] and "epoch 2/2" in submitted["out"]  # the job's logs were streamed
    c = client(cluster)
    exp = c.get_experiment_by_name(submitted["experiment"])
    [mlrun] = c.search_runs([exp.experiment_id])
    assert mlrun.data.tags["deepgen.run_name"] == submitted["run_name"]
    assert mlrun.data.tags["deepgen.slot"] == SLOT and mlrun.info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(mlrun.info.run_id, "train_loss")) == [1, 2]
    # checkpoints and prepared data went to --storage, not into the job's temporary working folder
    assert (cluster["storage"] / submitted["run_name"]).is_dir()
    assert [p.parent.name.startswith("quickstart-") for p in (cluster["storage"] / "data").glob("*/manifest.json")] \
        == [True]


def test_champion_lookup_and_scoring_from_a_fresh_process(cluster, submitted, tmp_path):
    from sklearn.datasets import load_digits

    env = {**cluster["env"], "MLFLOW_TRACKING_URI": cluster["tracking"]}
    show = deepgen(cluster, "models", "show", f"{submitted['model']}@champion", "--json", env=env, cwd=tmp_path,
                   merge=False)
    info = json.loads(show.out)
    assert info["version"] == "1" and "champion" in info["aliases"]
    assert info["tags"]["ray_run_name"] == submitted["run_name"] and info["tags"]["gate"] == "no champion yet"
    digits = load_digits()
    np.save(tmp_path / "digits.npy", digits.images[:300].astype(np.float32))
    out = tmp_path / "scores.parquet"
    scored = deepgen(cluster, "score", "--model", f"{submitted['model']}@champion",
                     "--input", str(tmp_path / "digits.npy"), "--output", str(out), env=env, cwd=tmp_path)
    assert "scored 300 rows" in scored.out
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pydict()
    flags = np.array(table["is_anomaly"])
    assert np.array_equal(flags, np.array(table["score"]) > float(info["tags"]["threshold"]))
    assert not (tmp_path / "deepgen-runs" / "mlflow.db").exists()  # it used the server, not a local store


def _registry_state(cluster, submitted):
    c = client(cluster)
    exp = c.get_experiment_by_name(submitted["experiment"])
    runs = c.search_runs([exp.experiment_id])
    versions = c.search_model_versions(f"name = '{submitted['model']}'")
    return ([(r.info.run_id, r.info.status) for r in runs], sorted(str(v.version) for v in versions))


def test_a_second_submission_of_the_slot_does_not_train_again(cluster, submitted):
    before_jobs, before = jobs(cluster), _registry_state(cluster, submitted)
    again = deepgen(cluster, *submitted["args"], timeout=120)
    assert f"deepgen-{submitted['run_name']}: already SUCCEEDED" in again.out
    assert "nothing submitted" in again.out
    assert jobs(cluster) == before_jobs
    assert _registry_state(cluster, submitted) == before


def test_the_retrain_entry_for_a_done_slot_registers_nothing(cluster, submitted):
    before = _registry_state(cluster, submitted)
    env = {**cluster["env"], "RAY_ADDRESS": cluster["gcs"]}
    out = run([sys.executable, "jobs/retrain.py", "pipelines/quickstart.yaml", "--slot", SLOT,
               "--storage", str(cluster["storage"]), *QUICK], env=env, log=cluster["root"] / "commands.log",
              timeout=240)
    assert f"run {submitted['run_name']}" in out.out
    assert "already registered" in out.out
    assert _registry_state(cluster, submitted) == before  # same run, still FINISHED; no new version


# --- faults: a killed driver, then a killed Ray Train worker -----------------------------------------
# One scenario, to start as few trainers as the module's time budget allows: `deepgen run` is SIGKILLed
# once a checkpoint exists, the same command is run again (it must resume), and during that rerun one
# Ray Train worker is SIGKILLed mid-epoch (FailureConfig(max_failures=1) from the spec restarts the worker
# group from the last checkpoint). Epochs are made slow by a small batch (4 rows) on a wider model, so
# each kill lands inside an epoch with seconds to spare; there is no test hook in the code under test.

FAULT_EPOCHS = 8


def fault_spec(root: Path) -> Path:
    path = root / "faults.yaml"
    path.write_text(yaml.safe_dump({
        "name": "faults",
        "data": {"source": {"kind": "digits"}},
        "model": {"kind": "dense_autoencoder", "hidden": [128], "latent_dim": 8, "loss": "bce"},
        "train": {"epochs": FAULT_EPOCHS, "batch_size": 4, "lr": 0.003, "max_failures": 1, "run_name": "faults"},
        "scaling": {"num_workers": 1},
        "anomaly": {"anomalous_labels": [9]},
        "registry": {"model_name": "faults-digits"},
        "tracking": {"runs_dir": str(root / "faults-runs")},
    }, sort_keys=False))
    return path


def ray_actor_pids(marker: str, actor: str) -> list[int]:
    """PIDs of our cluster's processes running a Ray actor of class `actor` (process title `ray::CLASS...`)."""
    pids = []
    for pid in our_pids(marker):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(f"ray::{actor}".encode()):
            pids.append(pid)
    return pids


def checkpointed_epoch(spec) -> int:
    """The epoch of the latest checkpoint Ray Train has registered for the run (0 if none)."""
    snapshot = Path(spec.storage_path) / spec.run_name / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return 0
    return int((latest.get("metrics") or {}).get("epoch", 0))


def logged_epochs(c, spec) -> list[int]:
    mc = client(c)
    exp = mc.get_experiment_by_name(spec.experiment)
    if exp is None:
        return []
    runs = mc.search_runs([exp.experiment_id], filter_string=f"tags.`deepgen.run_name` = '{spec.run_name}'")
    return [m.step for m in mc.get_metric_history(runs[0].info.run_id, "train_loss")] if runs else []


def wait_for_checkpoint(c, spec, proc: Proc, at_least: int, timeout: float = 300) -> int:
    """Wait until MLflow shows epoch >= `at_least` and Ray Train has registered that checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise AssertionError(f"the run ended before epoch {at_least} was checkpointed:\n{proc.out[-4000:]}")
        epoch = checkpointed_epoch(spec)
        if epoch >= at_least and max(logged_epochs(c, spec), default=0) >= at_least:
            return epoch
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint of epoch {at_least} after {timeout}s:\n{proc.out[-4000:]}")


def wait_gone(marker: str, actors: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(ray_actor_pids(marker, a) for a in actors):
        assert time.monotonic() < deadline, f"{actors} still alive {timeout}s after their driver died"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def reference(cluster):
    """The same spec trained uninterrupted in this process (LocalEnv), on the data the cluster prepared.

    One thread, as a Ray worker with one CPU has (OMP_NUM_THREADS=1), so both do the same arithmetic."""
    import torch

    from deepgen.config import PipelineSpec
    from deepgen.data.manifest import Manifest
    from deepgen.train.env import LocalEnv
    from deepgen.train.loop import train_loop

    spec = PipelineSpec.from_yaml(fault_spec(cluster["root"]))
    manifest = Manifest.model_validate_json((spec.data_dir / "manifest.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = LocalEnv(spec.data_dir, spec.anomaly, cluster["root"] / "reference-ckpt", seed=spec.train.seed)
        started = time.monotonic()
        history = train_loop(spec, manifest, env)
        took = time.monotonic() - started
    finally:
        torch.set_num_threads(threads)
    return {"history": history, "epoch_s": took / len(history)}


@pytest.fixture(scope="module")
def faults(cluster):
    from deepgen.config import PipelineSpec

    c = cluster
    path = fault_spec(c["root"])
    spec = PipelineSpec.from_yaml(path)
    env = {**c["env"], "RAY_ADDRESS": c["gcs"]}
    cmd = [str(BIN / "deepgen"), "run", str(path)]
    log = c["root"] / "faults.log"
    started = time.monotonic()

    first = Proc(cmd, env, log)
    driver_killed_after = wait_for_checkpoint(c, spec, first, at_least=1)
    first.kill()  # SIGKILL the driver (its whole process group)
    killed_at = time.monotonic() - first.t0
    wait_gone(c["marker"], ("RayTrainWorker", "TrainController"), timeout=90)

    second = Proc(cmd, env, log)
    deadline = time.monotonic() + 300
    while second.when(r"resuming .* after epoch") is None:  # the rerun found the checkpoint
        assert second.p.poll() is None and time.monotonic() < deadline, second.out[-4000:]
        time.sleep(0.3)
    resumed = int(re.search(r"after epoch (\d+)", second.out).group(1))
    before_worker_kill = wait_for_checkpoint(c, spec, second, at_least=resumed + 1)
    [worker] = ray_actor_pids(c["marker"], "RayTrainWorker")
    time.sleep(0.4)  # into the next epoch
    os.kill(worker, signal.SIGKILL)
    worker_killed_at = time.monotonic() - second.t0
    rc = second.wait(timeout=420)
    print(f"fault scenario took {time.monotonic() - started:.1f}s")
    return {"spec": spec, "first": first, "second": second, "rc": rc, "driver_killed_after": driver_killed_after,
            "killed_at": killed_at, "resumed": resumed, "before_worker_kill": before_worker_kill,
            "worker": worker, "worker_killed_at": worker_killed_at}


def _final_history(c, spec) -> dict[str, list]:
    mc = client(c)
    exp = mc.get_experiment_by_name(spec.experiment)
    [run] = mc.search_runs([exp.experiment_id], filter_string=f"tags.`deepgen.run_name` = '{spec.run_name}'")
    return {key: sorted(mc.get_metric_history(run.info.run_id, key), key=lambda m: (m.timestamp, m.step))
            for key in ("train_loss", "val_loss")}


@pytest.mark.slow
def test_a_killed_driver_is_resumed_by_rerunning_the_same_command(cluster, faults):
    f = faults
    assert f["driver_killed_after"] >= 1 and "Pipeline faults done" not in f["first"].out
    assert f"[deepgen] resuming {f['spec'].run_name} after epoch" in f["second"].out
    assert 1 <= f["driver_killed_after"] <= f["resumed"] < FAULT_EPOCHS  # resumed, not restarted
    assert f["rc"] == 0, f["second"].out[-4000:]
    for key, history in _final_history(cluster, f["spec"]).items():
        assert [m.step for m in history] == list(range(1, FAULT_EPOCHS + 1)), key  # each epoch once, in order


@pytest.mark.slow
def test_a_killed_worker_is_restarted_from_the_last_checkpoint(cluster, faults, reference):
    f = faults
    assert f["rc"] == 0, f["second"].out[-4000:]
    second = f["second"]
    resumes = [int(e) for e in re.findall(r"resuming .* after epoch (\d+)", second.out)]
    assert len(resumes) == 2, second.out[-4000:]  # once from the rerun, once after the worker died
    assert resumes[1] >= f["before_worker_kill"] > resumes[0]
    assert second.when(r"resuming .* after epoch") < f["worker_killed_at"] < second.when(r"Pipeline faults done")
    assert f["worker"] not in ray_actor_pids(cluster["marker"], "RayTrainWorker")
    assert f"epoch {FAULT_EPOCHS}/{FAULT_EPOCHS}" in second.out and "registered model : faults-digits" in second.out
    history = _final_history(cluster, f["spec"])
    assert [m.step for m in history["train_loss"]] == list(range(1, FAULT_EPOCHS + 1))  # no duplicates
    # The numbers of an uninterrupted run, epoch by epoch. A checkpoint restores weights, optimizer state
    # and RNG exactly, the shuffle order depends only on (seed, epoch), and both sides compute on one
    # thread, so the values come out bit for bit the same (they did in every run so far). The tolerance,
    # 1e-4 relative, only leaves room for float summation order (e.g. Ray Data handing a split over in
    # other block boundaries); it is 10x below what a lost or repeated epoch changes: the loss still moves
    # by more than 1e-3 relative per epoch at the end (checked below).
    ref = reference["history"]
    for key in ("train_loss", "val_loss"):
        got = [m.value for m in history[key]]
        want = [r[key] for r in ref]
        assert got == pytest.approx(want, rel=1e-4), key
    assert abs(ref[-1]["train_loss"] - ref[-2]["train_loss"]) > 1e-3 * ref[-1]["train_loss"]


def test_submit_passes_the_tracking_servers_credentials_on_to_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "deepgen")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-secret")
    env = submission.runtime_env(tmp_path, tracking_uri="http://deepgen-mlflow:5000")["env_vars"]
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("deepgen", "from-the-secret")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert "MLFLOW_TRACKING_PASSWORD" not in submission.runtime_env(tmp_path)["env_vars"]
