"""Does the data path scale past memory? Prepare (Ray Data), train (streamed) and score (Ray Data actors) a
generated table at 1x, 4x, 16x a base size; peak resident memory of the driver and of the Ray workers.

    python benchmarks/scale.py [--base-rows 100000] [--features 32] [--factors 1,4,16] [--epochs 1]

Per factor: a Parquet source folder of FACTOR * BASE rows (written file by file, never whole), then
    prepare   deepgen.data.prepare_dataset with data.engine ray_data (two streamed passes, write_parquet)
    train     a 1-worker TorchTrainer with train.cache_shards false (deepgen.train.stream), 1 epoch
    score     deepgen.batch_scoring.score_with_ray_data over the source folder (every row), the model
              exported from the trained checkpoint (reconstruction score, no statistics to fit)
and, per stage, wall time, rows/s, the peak resident memory of this process (the driver) and of the largest
Ray worker process while it runs a task or actor (pooled workers sitting idle are not counted; the title of the
largest is printed), and that worker's peak anonymous memory (what it holds of its own: a worker's resident
memory also counts libraries and the object store's memory-mapped blocks), sampled every 0.2 s from
/proc/PID/smaps_rollup. With --limit-mib, the driver and every Ray worker process each run in a memory
cgroup of that size (root only), so a stage that held a split whole would be killed: the OOM kills column
counts them. The target: peak memory flat (within 20%) from 1x to 16x, time growing about linearly, with
the largest source larger than the limit.

    python benchmarks/scale.py --base-rows 125000 --features 128 --factors 1,4,16 --limit-mib 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepgen.config import PipelineSpec  # noqa: E402

FILE_ROWS = 50_000


IDLE = "ray::IDLE"  # the title Ray gives a pooled worker process between tasks


def ray_workers(me: int):
    """(PID, title) of Ray's worker processes (tasks and actors; not raylet, GCS or this driver). The title
    is what Ray names the process after: "ray::TASK", "ray::CLASS.METHOD" while it runs one, IDLE between."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and (cmd[0].startswith(b"ray::") or any(b"default_worker.py" in c for c in cmd)):
            yield int(d.name), cmd[0].decode(errors="replace").strip()


def memory_of(pid: int) -> tuple[int, int]:
    """(resident, anonymous) bytes of a process from /proc/PID/smaps_rollup. Anonymous memory is what the
    process holds of its own (heap, arrays, Arrow buffers); resident also counts shared libraries and the
    object store's memory-mapped blocks, which every reader of a block maps."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Anonymous"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields["Rss"], fields["Anonymous"]


class MemoryCages:
    """A memory cgroup of its own, limited to LIMIT bytes, for this driver and for every Ray worker process
    (cgroup v1's memory controller, or v2's where it is enabled): a process that needs more than LIMIT is
    killed by the kernel, so a stage that held its data whole could not finish. A cage is charged for the
    pages its process touches from then on (kernels since 6.x no longer move earlier charges: what a worker
    allocated while it started, its imports, stays charged outside, which only loosens the limit by that
    start-up memory). Needs root; `available()` says whether this machine allows it."""

    V1, V2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")

    def __init__(self, limit: int):
        self.limit = limit
        if (self.V1 / "memory.limit_in_bytes").exists():
            self.v1, root = True, self.V1
        else:
            self.v1, root = False, self.V2
            (root / "cgroup.subtree_control").write_text("+memory")
        self.base = root / f"deepgen-scale-{os.getpid()}"
        self.base.mkdir()
        if not self.v1:
            (self.base / "cgroup.subtree_control").write_text("+memory")
        self.caged: dict[int, Path] = {}

    @classmethod
    def available(cls) -> bool:
        v2 = cls.V2 / "cgroup.controllers"
        usable = (cls.V1 / "memory.limit_in_bytes").exists() or (v2.exists() and "memory" in v2.read_text())
        return usable and os.access(cls.V1 if cls.V1.exists() else cls.V2, os.W_OK)

    def cage(self, pid: int) -> None:
        if pid in self.caged:
            return
        d = self.base / str(pid)
        d.mkdir(exist_ok=True)
        if self.v1:
            (d / "memory.limit_in_bytes").write_text(str(self.limit))
        else:
            (d / "memory.max").write_text(str(self.limit))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
        try:
            (d / "cgroup.procs").write_text(str(pid))
        except OSError:  # the process ended first
            d.rmdir()
            return
        self.caged[pid] = d

    def oom_kills(self) -> dict[int, int]:
        """PID -> processes the kernel killed in that process's cage for going over the limit."""
        kills = {}
        for pid, d in self.caged.items():
            text = (d / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
            kills[pid] = sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill "))
        return kills

    def charged(self, pid: int) -> tuple[int, int]:
        """(anonymous, shared-memory) bytes charged to PID's cage now. Shared memory is the object store's
        pages this process touched first (the kernel charges a shared page to the first toucher's group,
        for as long as the page lives, whoever uses it later)."""
        stat = dict(line.split() for line in (self.caged[pid] / "memory.stat").read_text().splitlines())
        return int(stat["rss" if self.v1 else "anon"]), int(stat["shmem"])

    def close(self) -> None:
        """This driver back to the parent group; the cages of ended processes removed."""
        parent = self.base.parent
        (parent / "cgroup.procs").write_text(str(os.getpid()))
        for d in self.caged.values():
            for pid in (d / "cgroup.procs").read_text().split():
                try:
                    (parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            self.base.rmdir()
        except OSError:
            pass


class PeakMemory:
    """Peak memory while the block runs, sampled every PERIOD s: this process (the driver), and the largest
    of the Ray worker processes while they run a task or actor, resident and anonymous (see `memory_of`),
    with the title of the process that held the anonymous peak. A pooled worker that sits idle (IDLE) is not
    counted: it keeps what its allocator did not give back after an earlier stage's task, which that stage
    counted, and it does no work in this one. With CAGES, each new worker process is put in its cage as
    soon as it is seen, idle or not."""

    def __init__(self, cages: MemoryCages | None = None, period_s: float = 0.2):
        self.cages, self.period, self.me = cages, period_s, os.getpid()
        self.driver = self.worker = self.worker_anon = 0
        self.worker_title = "-"
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.driver = max(self.driver, memory_of(self.me)[0])
            for pid, title in ray_workers(self.me):
                try:
                    if self.cages:
                        self.cages.cage(pid)
                    if title == IDLE:
                        continue
                    rss, anon = memory_of(pid)
                except (OSError, KeyError):  # the process ended between the listing and the read
                    continue
                self.worker = max(self.worker, rss)
                if anon > self.worker_anon:
                    self.worker_anon, self.worker_title = anon, title
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_source(folder: Path, rows: int, features: int, seed: int) -> None:
    """FACTOR * BASE rows of correlated features (a few latent factors plus noise) and a 0/1 label (5% ones,
    shifted rows): file by file, so the generator's memory does not grow with the size."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(4, features))
    for i, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        z = rng.normal(size=(n, 4))
        label = (rng.random(n) < 0.05).astype(np.int64)
        x = z @ mix + 0.1 * rng.normal(size=(n, features)) + 3 * label[:, None]
        cols = {f"f{j}": x[:, j] for j in range(features)}
        pq.write_table(pa.table({**cols, "label": label}), folder / f"part-{i:05d}.parquet")


def make_spec(root: Path, features: int, epochs: int) -> PipelineSpec:
    return PipelineSpec.validate_dict({
        "name": "scale",
        "data": {"source": {"kind": "table", "path": str(root / "src"), "label_column": "label"},
                 "engine": "ray_data", "output": str(root / "data")},
        "model": {"kind": "dense_autoencoder", "hidden": [64], "latent_dim": 8},
        "train": {"epochs": epochs, "batch_size": 512, "cache_shards": False, "run_name": "scale"},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "anomaly": {"anomalous_labels": [1], "score": "reconstruction"},
        "registry": {"model_name": "scale"},
        "tracking": {"runs_dir": str(root / "runs")},
    })


def run_factor(root: Path, rows: int, features: int, epochs: int, cages: MemoryCages | None) -> dict:
    import json

    from deepgen import orchestrate
    from deepgen.anomaly import threshold_tags
    from deepgen.batch_scoring import score_with_ray_data
    from deepgen.config import FprThreshold
    from deepgen.data.prepare import prepare_dataset
    from deepgen.tasks import Evaluation, build_task
    from deepgen.train.loop import load_model_weights

    write_source(root / "src", rows, features, seed=0)
    spec = make_spec(root, features, epochs)
    out = {"rows": rows, "source_bytes": sum(f.stat().st_size for f in (root / "src").iterdir())}

    def stage(name, fn):
        before = cages.oom_kills() if cages else {}
        t = time.time()
        with PeakMemory(cages) as m:
            value, done = fn()
        killed = {p: k - before.get(p, 0) for p, k in (cages.oom_kills() if cages else {}).items()}
        for pid in (p for p, k in killed.items() if k):
            anon, shm = cages.charged(pid)
            print(f"{name}: the kernel killed worker {pid} at its cage's limit; the cage still holds "
                  f"{anon / 2**20:.0f} MiB anonymous and {shm / 2**20:.0f} MiB of object-store pages", flush=True)
        out[name] = (time.time() - t, done, m.driver, m.worker, m.worker_anon, sum(killed.values()), m.worker_title)
        return value

    manifest = stage("prepare", lambda: (prepare_dataset(spec.data, spec.data_dir, log=lambda s: None)[0], rows))

    def train():
        result = orchestrate.fit_trainer(spec, manifest, None, None)
        with result.checkpoint.as_directory() as ckpt:
            task = build_task(spec, manifest)
            models = load_model_weights(Path(ckpt), task)
            history = json.loads((Path(ckpt) / "history.json").read_text())
        trained = orchestrate.normal_row_count(spec.data_dir, spec.anomaly) * len(history)  # rows trained
        return (task, models), trained

    task, models = stage("train", train)
    model_dir = task.export(root / "model", models, Evaluation({}, registry_tags=threshold_tags(0.5, FprThreshold())))
    stage("score", lambda: (None, score_with_ray_data(model_dir, root / "src", root / "scores.parquet",
                                                      actors=1)["rows"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-rows", type=int, default=100_000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--factors", default="1,4,16")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--block-mib", type=int, default=0,
                   help="Ray Data's target_max_block_size in MiB (0: Ray's default, 128 MiB)")
    p.add_argument("--limit-mib", type=int, default=0,
                   help="a memory cgroup of this size for the driver and for each Ray worker process (0: none)")
    p.add_argument("--object-store-mib", type=int, default=1024)
    args = p.parse_args()
    import ray
    import torch

    if args.limit_mib and not MemoryCages.available():
        sys.exit("scale.py: --limit-mib needs a writable memory cgroup (root, cgroup v1 or v2 with memory)")
    torch.set_num_threads(1)
    ray.init(num_cpus=max(3, os.cpu_count() or 1), object_store_memory=args.object_store_mib << 20,
             include_dashboard=False)
    cages = MemoryCages(args.limit_mib << 20) if args.limit_mib else None
    if cages:
        cages.cage(os.getpid())  # after ray.init: Ray's own raylet and GCS stay outside
    if args.block_mib:
        from ray.data import DataContext

        DataContext.get_current().target_max_block_size = args.block_mib << 20
    mb = 1 / 2**20
    print(f"base {args.base_rows} rows x {args.features} features (float64 Parquet source), "
          f"{args.epochs} epoch(s), 1 training worker, 1 scoring actor, object store {args.object_store_mib} MiB, "
          + (f"each process limited to {args.limit_mib} MiB" if cages else "no memory limit"))
    print(f"{'':5} {'size':>5} {'rows':>9} {'source MiB':>10} {'stage':8} {'time s':>8} {'rows/s':>9} "
          f"{'driver MiB':>10} {'worker MiB':>10} {'anon MiB':>8} {'OOM kills':>9}  largest worker", flush=True)
    try:
        for f in (int(x) for x in args.factors.split(",")):
            with tempfile.TemporaryDirectory(prefix="deepgen-scale-") as tmp:
                r = run_factor(Path(tmp), f * args.base_rows, args.features, args.epochs, cages)
            for s in ("prepare", "train", "score"):
                secs, rows, drv, wrk, anon, killed, title = r[s]
                print(f"TABLE {f:>4}x {r['rows']:9d} {r['source_bytes'] * mb:10.0f} {s:8} {secs:8.1f} "
                      f"{rows / secs:9.0f} {drv * mb:10.0f} {wrk * mb:10.0f} {anon * mb:8.0f} {killed:9d}  {title}",
                      flush=True)
    finally:
        ray.shutdown()
        if cages:
            cages.close()


if __name__ == "__main__":
    main()
