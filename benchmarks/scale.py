"""Does the data path scale past memory? Prepare (Ray Data), train (streamed) and score (Ray Data actors) a
generated table at 1x, 4x, 16x a base size; peak resident memory of the driver and of the Ray workers.

    python benchmarks/scale.py [--base-rows 100000] [--features 32] [--factors 1,4,16] [--epochs 1]

Per factor: a Parquet source folder of FACTOR * BASE rows (written file by file, never whole), then
    prepare   deepgen.data.prepare_dataset with data.engine ray_data (two streamed passes, write_parquet)
    train     a 1-worker TorchTrainer with train.cache_shards false (deepgen.train.stream), 1 epoch
    score     deepgen.batch_scoring.score_with_ray_data over the source folder (every row), the model
              exported from the trained checkpoint (reconstruction score, no statistics to fit)
and, per stage, wall time, rows/s, and the peak RSS of this process (the driver) and of the largest Ray
worker process (sampled every 0.2 s from /proc through psutil), and that worker peak without shared pages
(RSS - shared: a worker's RSS also counts the object store's memory-mapped blocks it reads). The target:
peak memory flat (within 20%) from 1x to 16x, time growing about linearly.
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


class PeakRss:
    """Peak RSS (bytes) of this process and of the largest Ray worker process while the block runs."""

    def __init__(self, period_s: float = 0.2):
        import psutil

        self.psutil, self.period = psutil, period_s
        self.me = psutil.Process()
        self.driver = self.worker = self.worker_private = 0
        self._stop = threading.Event()

    def _workers(self):
        for p in self.psutil.process_iter(["cmdline", "pid"]):
            cmd = p.info["cmdline"] or []
            if p.pid != self.me.pid and cmd and (cmd[0].startswith("ray::") or "default_worker.py" in " ".join(cmd)):
                yield p

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            for p in self._workers():
                try:
                    m = p.memory_info()
                    self.worker = max(self.worker, m.rss)
                    # without the shared pages (the object store's memory-mapped blocks, libraries): what
                    # the process holds of its own
                    self.worker_private = max(self.worker_private, m.rss - m.shared)
                except self.psutil.Error:
                    pass
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


def run_factor(root: Path, rows: int, features: int, epochs: int) -> dict:
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
    out = {"rows": rows}
    t = time.time()
    with PeakRss() as m:
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda s: None)
    out["prepare"] = (time.time() - t, rows, m.driver, m.worker, m.worker_private)
    t = time.time()
    with PeakRss() as m:
        result = orchestrate.fit_trainer(spec, manifest, None, None)
        with result.checkpoint.as_directory() as ckpt:
            task = build_task(spec, manifest)
            models = load_model_weights(Path(ckpt), task)
            history = json.loads((Path(ckpt) / "history.json").read_text())
    trained = orchestrate.normal_row_count(spec.data_dir, spec.anomaly) * len(history)  # rows trained
    out["train"] = (time.time() - t, trained, m.driver, m.worker, m.worker_private)
    model_dir = task.export(root / "model", models, Evaluation({}, registry_tags=threshold_tags(0.5, FprThreshold())))
    t = time.time()
    with PeakRss() as m:
        done = score_with_ray_data(model_dir, root / "src", root / "scores.parquet", actors=1)
    out["score"] = (time.time() - t, done["rows"], m.driver, m.worker, m.worker_private)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-rows", type=int, default=100_000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--factors", default="1,4,16")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--block-mib", type=int, default=0,
                   help="Ray Data's target_max_block_size in MiB (0: Ray's default, 128 MiB)")
    args = p.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=max(3, os.cpu_count() or 1), object_store_memory=10**9, include_dashboard=False)
    if args.block_mib:
        from ray.data import DataContext

        DataContext.get_current().target_max_block_size = args.block_mib << 20
    mb = 1 / 2**20
    print(f"base {args.base_rows} rows x {args.features} features (float64 Parquet source), "
          f"{args.epochs} epoch(s), 1 training worker, 1 scoring actor")
    print(f"{'size':>5} {'rows':>9} {'stage':8} {'time s':>8} {'rows/s':>9} {'driver MiB':>10} {'worker MiB':>10} "
          f"{'private MiB':>11}", flush=True)
    for f in (int(x) for x in args.factors.split(",")):
        with tempfile.TemporaryDirectory(prefix="deepgen-scale-") as tmp:
            r = run_factor(Path(tmp), f * args.base_rows, args.features, args.epochs)
        for s in ("prepare", "train", "score"):
            secs, rows, drv, wrk, private = r[s]
            print(f"TABLE {f:>4}x {r['rows']:9d} {s:8} {secs:8.1f} {rows / secs:9.0f} {drv * mb:10.0f} "
                  f"{wrk * mb:10.0f} {private * mb:11.0f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
