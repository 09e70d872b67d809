"""Two Ray nodes on this machine (`ray start --head` and `ray start --address`, 3 CPUs each, temp dirs and
ports of their own, stopped here by PID): a driver prepares a table source through Ray Data, trains two
streaming workers, evaluates (the score's statistics, val and test scores) and scores the test split
through Ray Data actors, all on a shared folder. Ray's state
API shows each stage's tasks or actors on both nodes, and the driver, watched by an audit hook and by
wrappers of pyarrow's Parquet entry points, opened no file of the prepared splits (only the manifest).

Every Ray call goes through subprocesses with their own environment (token auth with a token made here),
so the in-process Ray instance other modules share is never touched; helpers from test_cluster find and
stop only this module's processes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cluster import BIN, MARKER_VAR, free_ports, free_range, kill_ours, ray_temp_dir

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = r'''
import json, os, sys, time
from pathlib import Path

data_dir = sys.argv[2]
opened = []  # files of the prepared splits this driver opened: Python's own opens, and pyarrow's entry points


def note(path):
    path = str(path)
    if path.startswith(data_dir) and not path.endswith("manifest.json"):  # the manifest is metadata, not rows
        opened.append(path)


sys.addaudithook(lambda event, args: note(args[0]) if event == "open" and args else None)

import pyarrow.dataset as pds
import pyarrow.parquet as pq


def watched(fn):
    def call(source, *a, **k):
        for p in (source if isinstance(source, (list, tuple)) else [source]):
            note(p)
        return fn(source, *a, **k)
    return call


for name in ("read_table", "read_schema", "read_metadata"):
    setattr(pq, name, watched(getattr(pq, name)))
pds.dataset = watched(pds.dataset)

import ray
from deepgen import orchestrate
from deepgen.batch_scoring import score_with_ray_data
from deepgen.config import PipelineSpec

spec = PipelineSpec.from_yaml(sys.argv[1])
manifest = orchestrate.prepare(spec)
checkpoint = orchestrate.train(spec, manifest, None, None)
# Ray frees the training workers' CPUs asynchronously after fit() returns; on a loaded machine a node may
# still be held when the evaluation sizes and places its pool (an actor then waits with no node). The
# evaluation is asked of a quiet cluster, so its placement is the scheduler's choice, not this race.
deadline = time.monotonic() + 120
while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) and time.monotonic() < deadline:
    time.sleep(0.5)
# Ray Data dispatches to a pool's first ready actor and starts the rest asynchronously: on a slow machine
# the few small batches here can all be done before the other node's actor process is up (it is then
# torn down with no node). What deepgen chooses is the pool's size and its SPREAD placement, so the
# evaluation waits for its whole pool to start, and the test sees where SPREAD put it.
import ray.data
ray.data.DataContext.get_current().wait_for_min_actors_s = 240
# evaluation: the score's statistics fitted on train, val and test scored, by Ray Data actors (map_split)
ev, models, task = orchestrate.evaluate(spec, manifest, checkpoint)
model_dir = task.export(Path(sys.argv[3]) / "model", models, ev)
done = score_with_ray_data(model_dir, Path(data_dir) / "test.parquet", Path(sys.argv[3]) / "scores.parquet",
                           actors=2)

from ray.util.state import list_actors, list_tasks

job = ray.get_runtime_context().get_job_id()
tasks = [{"name": t.name, "node": t.node_id} for t in list_tasks(filters=[("job_id", "=", job)], limit=10000,
                                                                  raise_on_missing_output=False)]
actors = [{"name": a.class_name, "node": a.node_id} for a in list_actors(limit=10000, raise_on_missing_output=False)
          if a.job_id == job]
print("RESULT " + json.dumps({"tasks": tasks, "actors": actors, "opened": opened, "scored": done,
                               "rows": manifest.rows, "metrics": ev.metrics}), flush=True)
'''


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent)


def wait_nodes(env: dict, gcs: str, n: int, timeout: float, procs, logs) -> None:
    """Until the cluster counts `n` alive nodes (asked from a subprocess, like every Ray call here)."""
    probe = (f"import ray; ray.init(address='{gcs}', log_to_driver=False); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p, log in zip(procs, logs, strict=True):
            if p.poll() is not None:
                raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        out = subprocess.run([str(BIN / "python"), "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(2)
    raise RuntimeError(f"{n} nodes not up after {timeout}s")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-nodes")
    marker = secrets.token_hex(8)
    ports = free_ports(16)
    head_ports, node_ports = ports[:8], ports[8:]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_")) and k not in ("PYTEST_CURRENT_TEST",)}
    env.update({MARKER_VAR: marker, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1"})

    def own_ports(p: list[int], workers: int) -> list[str]:
        return ["--node-ip-address", "127.0.0.1", "--node-manager-port", str(p[1]), "--object-manager-port", str(p[2]),
                "--dashboard-agent-listen-port", str(p[3]), "--dashboard-agent-grpc-port", str(p[4]),
                "--metrics-export-port", str(p[5]), "--runtime-env-agent-port", str(p[6]),
                "--min-worker-port", str(workers), "--max-worker-port", str(workers + 99),
                "--num-cpus", "3", "--object-store-memory", str(200 * 2**20)]

    gcs = f"127.0.0.1:{head_ports[0]}"
    head_workers = free_range(100, avoid=ports)
    node_workers = free_range(100, avoid=[*ports, *range(head_workers, head_workers + 100)])
    logs = [root / "head.log", root / "node.log"]
    procs = []
    try:
        procs.append(start(["--head", "--port", str(head_ports[0]), "--dashboard-host", "127.0.0.1",
                            "--dashboard-port", str(head_ports[7]), "--temp-dir", str(ray_temp_dir(marker)),
                            *own_ports(head_ports, head_workers)], env, logs[0]))
        time.sleep(5)
        procs.append(start(["--address", gcs, "--temp-dir", str(ray_temp_dir(marker)) + "-node",
                            *own_ports(node_ports, node_workers)], env, logs[1]))
        wait_nodes(env, gcs, 2, 240, procs, logs)
        yield {"root": root, "gcs": gcs, "env": env}
    finally:
        kill_ours(marker)  # never `ray stop`: it would stop every Ray on the machine
        for p in procs:
            p.wait(timeout=10)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_temp_dir(marker), ignore_errors=True)
        shutil.rmtree(str(ray_temp_dir(marker)) + "-node", ignore_errors=True)


def test_prepare_train_and_score_land_on_both_nodes_and_the_driver_reads_no_prepared_data(two_nodes):
    import yaml

    root = two_nodes["root"]
    shared = root / "shared"  # the folder every node reads and writes (one machine: one filesystem)
    (shared / "src").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        x = rng.normal(size=(2000, 8))
        pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(8)},
                                 "label": (rng.random(2000) < 0.1).astype(np.int64)}), shared / "src" / f"{i}.parquet")
    spec = shared / "p.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "twonodes",
        "data": {"source": {"kind": "table", "path": str(shared / "src"), "label_column": "label"},
                 "engine": "ray_data", "output": str(shared / "data")},
        "model": {"kind": "dense_autoencoder", "hidden": [16], "latent_dim": 4},
        "train": {"epochs": 1, "batch_size": 256, "cache_shards": False},
        # 2 CPUs a worker on 3-CPU nodes: one training worker per node
        "scaling": {"num_workers": 2, "cpus_per_worker": 2},
        "anomaly": {"anomalous_labels": [1], "score": "standardized"},  # fitted on train: one more pass
        "registry": {"model_name": "twonodes"},
        "tracking": {"runs_dir": str(shared / "runs")},
    }))
    (root / "driver.py").write_text(DRIVER)
    out = subprocess.run([str(BIN / "python"), str(root / "driver.py"), str(spec), str(shared / "data"), str(shared)],
                         env={**two_nodes["env"], "RAY_ADDRESS": two_nodes["gcs"]}, capture_output=True, text=True,
                         timeout=900, cwd=root)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, (out.stdout[-3000:], out.stderr[-3000:])
    result = json.loads(lines[-1].removeprefix("RESULT "))
    nodes = lambda items, *names: {i["node"] for i in items if any(n in i["name"] for n in names)}  # noqa: E731
    assert result["opened"] == [], result["opened"]  # the driver opened no file of the prepared splits
    assert result["scored"]["rows"] == result["rows"]["test"]
    # prepare: Ray Data's read / map / write tasks of the two passes
    names = {(i["name"], i["node"]) for i in result["tasks"] + result["actors"]}
    assert len(nodes(result["tasks"], "ReadFiles", "ReadParquet", "MapBatches(FitBatch)", "Write")) == 2, names
    assert len(nodes(result["actors"], "RayTrainWorker")) == 2, names  # training
    assert len(nodes(result["actors"], "ScoreBatch")) == 2, names  # scoring
    # evaluation: each pool started whole before its first batch (the driver asks Ray Data to wait)
    assert len(nodes(result["actors"], "MapBatches(_MapBatch)") - {None}) == 2, names
    assert {"roc_auc", "precision", "recall"} <= set(result["metrics"])
