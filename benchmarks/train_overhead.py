"""What Ray costs: the same model, data and steps through the plain loop and through Ray Train.

    python benchmarks/train_overhead.py [--rows 60000] [--epochs 4] [--batch-size 128]

Runs, in one process and on the same prepared Parquet data:
  plain           train_loop in this process (LocalEnv: the split in memory), before Ray starts
  plain+ray-idle  the same, with a local Ray instance started and idle (its daemons share the cores)
  plain-in-task   the same loop inside a Ray task with the worker's CPUs (a Ray worker process, no Train)
  ray             TorchTrainer, 1 worker, each worker's shard cached in memory after epoch 1 (the default)
  ray-streaming   TorchTrainer, 1 worker, Ray Data streamed every epoch (train.cache_shards=false)
The middle two split the gap between `plain` and `ray` into "Ray is running on this machine" and
"Ray Train's worker, reporting and checkpointing". It prints the fixed start-up cost, the steady-state
time per step (median over epochs 2..E), the per-epoch time including reporting and checkpointing, and
each ratio against `plain`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepgen import orchestrate  # noqa: E402
from deepgen.config import PipelineSpec  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import train_loop  # noqa: E402


def make_spec(root: Path, rows: int, epochs: int, batch_size: int, cache: bool, name: str,
              threads: int) -> PipelineSpec:
    rng = np.random.default_rng(0)
    x_path = root / "x.npy"
    if not x_path.exists():
        np.save(x_path, rng.integers(0, 256, size=(rows, 28, 28), dtype=np.uint8))
    return PipelineSpec.validate_dict({
        "name": "overhead",
        "data": {"source": {"kind": "npy", "path": str(x_path)}, "output": str(root / "data")},
        "model": {"kind": "dense_autoencoder", "hidden": [256, 64], "latent_dim": 16, "loss": "bce"},
        "train": {"epochs": epochs, "batch_size": batch_size, "run_name": name, "cache_shards": cache},
        # the worker gets as many CPUs (so torch threads) as this process, for a like-for-like step
        "scaling": {"num_workers": 1, "cpus_per_worker": threads},
        "registry": {"model_name": "overhead"},
        "tracking": {"runs_dir": str(root / "runs")},
    })


def summarise(label: str, t_start: float, t_end: float, history: list[dict]) -> dict:
    first = history[0]
    startup = first["ended_at"] - first["epoch_time_s"] - t_start
    steady = statistics.median(h["step_time_ms"] for h in history[1:])
    per_epoch = (history[-1]["ended_at"] - history[0]["ended_at"]) / max(len(history) - 1, 1)
    return {"label": label, "startup_s": startup, "step_ms": steady, "epoch_s": per_epoch,
            "epoch1_s": first["epoch_time_s"], "total_s": t_end - t_start}


def run_plain(spec, manifest, root):
    t0 = time.time()
    env = LocalEnv(spec.data_dir, spec.anomaly, root / "plain-ckpt", seed=spec.train.seed)
    import torch

    torch.set_num_threads(int(spec.scaling.cpus_per_worker))  # a Ray task would get OMP_NUM_THREADS=1
    history = train_loop(spec, manifest, env)
    return summarise("plain", t0, time.time(), history)


def run_plain_in_task(spec, manifest, root):
    import ray

    @ray.remote(num_cpus=spec.scaling.cpus_per_worker)
    def plain_in_task():
        return run_plain(spec, manifest, root / "task")

    out = ray.get(plain_in_task.remote())
    out["label"] = "plain-in-task"
    return out


def run_ray(spec, manifest, label):
    import json

    t0 = time.time()
    checkpoint = orchestrate.train(spec, manifest, mlflow_run_id=None, tracking_uri=None)
    t1 = time.time()
    history = json.loads((checkpoint / "history.json").read_text())
    return summarise(label, t0, t1, history)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="deepgen-bench-") as tmp:
        root = Path(tmp)
        spec = make_spec(root, args.rows, args.epochs, args.batch_size, True, "bench-ray", torch.get_num_threads())
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
        results = [run_plain(spec, manifest, root)]
        import ray

        t = time.time()
        orchestrate.ensure_ray(spec)
        ray_init_s = time.time() - t
        time.sleep(5)  # let Ray's daemons settle
        idle = run_plain(spec, manifest, root / "idle")
        idle["label"] = "plain+ray-idle"
        results.append(idle)
        results.append(run_plain_in_task(spec, manifest, root))
        results.append(run_ray(spec, manifest, "ray"))
        stream = make_spec(root, args.rows, args.epochs, args.batch_size, False, "bench-stream",
                           torch.get_num_threads())
        results.append(run_ray(stream, manifest, "ray-streaming"))
        ray.shutdown()

    base = results[0]
    print(f"\nrows={args.rows} features=784 batch={args.batch_size} epochs={args.epochs} "
          f"steps/epoch={-(-int(manifest.rows['train']) // args.batch_size)} torch threads={torch.get_num_threads()} "
          f"ray.init={ray_init_s:.1f}s (not included below)")
    print(f"{'run':14} {'start-up s':>10} {'step ms':>8} {'x plain':>8} {'epoch s':>8} {'x plain':>8} "
          f"{'epoch1 s':>8} {'total s':>8}")
    for r in results:
        print(f"{r['label']:14} {r['startup_s']:10.2f} {r['step_ms']:8.3f} {r['step_ms'] / base['step_ms']:8.3f} "
              f"{r['epoch_s']:8.2f} {r['epoch_s'] / base['epoch_s']:8.3f} {r['epoch1_s']:8.2f} {r['total_s']:8.1f}")


if __name__ == "__main__":
    main()
