"""What Ray costs: the same model, data and steps through the plain loop and through Ray Train.

    python benchmarks/train_overhead.py [--rows 60000] [--epochs 4] [--batch-size 128]
    python benchmarks/train_overhead.py --device cuda --hidden 8192,8192,2048 --batch-size 1024 --epochs 6 \
        --two-workers-one-gpu                       # on a GPU: a step of milliseconds, not microseconds

Runs, in one process and on the same prepared Parquet data:
  plain           train_loop in this process (LocalEnv: the split in memory), before Ray starts
  plain+ray-idle  the same, with a local Ray instance started and idle (its daemons share the cores)
  plain-in-task   the same loop inside a Ray task with the worker's CPUs (a Ray worker process, no Train)
  ray             TorchTrainer, 1 worker, each worker's shard cached in memory after epoch 1 (the default)
  ray-streaming   TorchTrainer, 1 worker, the split's files streamed every epoch (train.cache_shards=false:
                  deepgen.train.stream)
With --paired N, only `ray` and `ray-streaming`, alternated N times (the 1.15x target of streaming).
  ray-2on1gpu     (--two-workers-one-gpu) TorchTrainer, 2 workers sharing one GPU (0.5 GPU each; gloo,
                  since NCCL refuses two ranks on one device), each training on half the rows
The middle two split the gap between `plain` and `ray` into "Ray is running on this machine" and
"Ray Train's worker, reporting and checkpointing". It prints the fixed start-up cost, the steady-state
time per step (median over epochs 2..E), the per-epoch time including reporting and checkpointing, each
ratio against `plain`, and the step's MFU against a measured matmul ceiling (bf16 on a GPU, fp32 on a
CPU; 6 FLOPs per weight per row, the dense autoencoder's matmuls).
"""

from __future__ import annotations

import argparse
import os
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
              threads: int, hidden: list[int] = (256, 64), gpu: bool = False, workers: int = 1) -> PipelineSpec:
    rng = np.random.default_rng(0)
    x_path = root / "x.npy"
    if not x_path.exists():
        np.save(x_path, rng.integers(0, 256, size=(rows, 28, 28), dtype=np.uint8))
    return PipelineSpec.validate_dict({
        "name": "overhead",
        "data": {"source": {"kind": "npy", "path": str(x_path)}, "output": str(root / "data")},
        "model": {"kind": "dense_autoencoder", "hidden": list(hidden), "latent_dim": 16, "loss": "bce"},
        "train": {"epochs": epochs, "batch_size": batch_size, "run_name": name, "cache_shards": cache},
        # the worker gets as many CPUs (so torch threads) as this process, for a like-for-like step
        "scaling": {"num_workers": workers, "cpus_per_worker": threads, "use_gpu": gpu},
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
    env = LocalEnv(spec.data_dir, spec.anomaly, root / "plain-ckpt", use_gpu=spec.scaling.use_gpu,
                   seed=spec.train.seed)
    import torch

    torch.set_num_threads(int(spec.scaling.cpus_per_worker))  # a Ray task would get OMP_NUM_THREADS=1
    history = train_loop(spec, manifest, env)
    return summarise("plain", t0, time.time(), history)


def run_plain_in_task(spec, manifest, root):
    import ray

    @ray.remote(num_cpus=spec.scaling.cpus_per_worker, num_gpus=1 if spec.scaling.use_gpu else 0)
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


def run_two_workers_one_gpu(spec, manifest):
    """The trainer orchestrate.build_trainer makes, with 2 workers holding half a GPU each."""
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from deepgen.data.dataset import normal_row_count
    from deepgen.train.loop import train_loop_per_worker

    t0 = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.with_absolute_paths().model_dump(mode="json"),
                           "manifest": manifest.model_dump(mode="json"), "mlflow_run_id": None,
                           "tracking_uri": None, "train_rows": normal_row_count(spec.data_dir, spec.anomaly)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 1, "GPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=spec.run_name, storage_path=spec.storage_path),
        datasets={split: orchestrate.split_dataset(spec.data_dir, split) for split in ("train", "val")})
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / "history.json").read_text())
    return summarise("ray-2on1gpu", t0, time.time(), history)


def step_flops(spec, manifest) -> float:
    """6 FLOPs per weight per row (forward and backward) of the model's linear layers, for one batch."""
    import torch

    from deepgen.tasks import build_task

    model = build_task(spec, manifest).build_models()["model"]
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * weights * spec.train.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", default="256,64", help="the autoencoder's layer widths")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--two-workers-one-gpu", action="store_true", help="also 2 workers sharing the GPU")
    p.add_argument("--paired-plain", type=int, default=0, metavar="N",
                   help="only the plain loop, in memory and streamed from the files (LocalEnv stream=True), "
                        "alternated N times each: the data path's own cost, without Ray's noise")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="only ray (cached) and ray-streaming, alternated N times each (A B A B ...): the "
                        "streamed / cached step-time ratio on noisy cores")
    args = p.parse_args()
    if args.paired_plain:
        return paired_plain(args)
    if args.paired:
        return paired(args)
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bert_pretrain import ceiling_dtype, matmul_ceiling

    gpu = args.device == "cuda"
    hidden = [int(h) for h in args.hidden.split(",")]
    threads = 1 if gpu else torch.get_num_threads()
    peak = matmul_ceiling(torch.device(args.device), 8192 if gpu else 512)
    with tempfile.TemporaryDirectory(prefix="deepgen-bench-") as tmp:
        root = Path(tmp)
        spec = make_spec(root, args.rows, args.epochs, args.batch_size, True, "bench-ray", threads, hidden, gpu)
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
        flops = step_flops(spec, manifest)
        results = [run_plain(spec, manifest, root)]
        import ray

        t = time.time()
        # no dashboard (it is for Tune's placement-group cleaner; on a busy machine it can fail to start, and
        # ray.init with it), and a bounded object store, as a lent GPU machine needs (benchmarks README)
        ray.init(num_cpus=max(4, os.cpu_count() or 1), object_store_memory=2 * 10**9, include_dashboard=False)
        ray_init_s = time.time() - t
        time.sleep(5)  # let Ray's daemons settle
        idle = run_plain(spec, manifest, root / "idle")
        idle["label"] = "plain+ray-idle"
        results.append(idle)
        results.append(run_plain_in_task(spec, manifest, root))
        results.append(run_ray(spec, manifest, "ray"))
        stream = make_spec(root, args.rows, args.epochs, args.batch_size, False, "bench-stream", threads, hidden, gpu)
        results.append(run_ray(stream, manifest, "ray-streaming"))
        if args.two_workers_one_gpu and gpu:
            two = make_spec(root, args.rows, args.epochs, args.batch_size, True, "bench-2on1", threads, hidden, gpu, 2)
            try:
                results.append(run_two_workers_one_gpu(two, manifest))
            except Exception as e:  # what the machine allows is part of the answer
                print(f"ray-2on1gpu failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        ray.shutdown()

    base = results[0]
    device = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nrows={args.rows} features=784 hidden={args.hidden} batch={args.batch_size} epochs={args.epochs} "
          f"steps/epoch={-(-int(manifest.rows['train']) // args.batch_size)} on {device} "
          f"ray.init={ray_init_s:.1f}s (not included below)")
    print(f"{str(ceiling_dtype(torch.device(args.device))).removeprefix('torch.')} matmul ceiling "
          f"{peak / 1e12:.3g} TFLOP/s; {flops / 1e9:.3g} GFLOP per step")
    print(f"{'run':14} {'start-up s':>10} {'step ms':>8} {'x plain':>8} {'MFU':>6} {'epoch s':>8} {'x plain':>8} "
          f"{'epoch1 s':>8} {'total s':>8}")
    for r in results:
        mfu = flops / (r["step_ms"] / 1e3) / peak
        print(f"{r['label']:14} {r['startup_s']:10.2f} {r['step_ms']:8.3f} {r['step_ms'] / base['step_ms']:8.3f} "
              f"{mfu:6.1%} {r['epoch_s']:8.2f} {r['epoch_s'] / base['epoch_s']:8.3f} {r['epoch1_s']:8.2f} "
              f"{r['total_s']:8.1f}")
    ray_row = next(r for r in results if r["label"] == "ray")
    print(f"Ray Train steady-state step overhead: {ray_row['step_ms'] / base['step_ms'] - 1:+.1%} (target <= +2%)")


def paired_plain(args) -> None:
    """The plain loop in this process, the split in memory (A) or streamed from its Parquet files (B),
    alternated: the streamed / cached step-time ratio without Ray's processes."""
    import torch

    hidden = [int(h) for h in args.hidden.split(",")]
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="deepgen-bench-") as tmp:
        root = Path(tmp)
        spec = make_spec(root, args.rows, args.epochs, args.batch_size, True, "plain-pair", threads, hidden)
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
        rows = []
        for i in range(args.paired_plain):
            pair = {}
            for stream in (False, True):
                label = "streamed" if stream else "cached"
                t0 = time.time()
                env = LocalEnv(spec.data_dir, spec.anomaly, root / f"ckpt-{label}-{i}", seed=spec.train.seed,
                               stream=stream)
                pair[label] = summarise(label, t0, time.time() + 1e-9, train_loop(spec, manifest, env))
                print(f"pair {i}: {label:8} step {pair[label]['step_ms']:.3f} ms", flush=True)
            rows.append(pair)
    report_pairs(args, rows, threads)


def report_pairs(args, rows: list[dict], threads: int) -> None:
    ratios = [p["streamed"]["step_ms"] / p["cached"]["step_ms"] for p in rows]
    med = {k: statistics.median(p[k]["step_ms"] for p in rows) for k in ("cached", "streamed")}
    print(f"\nrows={args.rows} features=784 hidden={args.hidden} batch={args.batch_size} epochs={args.epochs} "
          f"threads={threads}, {len(rows)} pairs")
    print("per-pair streamed/cached step time: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"median step ms: cached {med['cached']:.3f}, streamed {med['streamed']:.3f}, "
          f"ratio {med['streamed'] / med['cached']:.3f} (target <= 1.15 on 2 cores)")


def paired(args) -> None:
    """Cached and streamed TorchTrainer runs in turn on the same prepared data; the ratio of each pair's
    steady-state step times (streamed / cached) and of their medians."""
    import ray
    import torch

    hidden = [int(h) for h in args.hidden.split(",")]
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="deepgen-bench-") as tmp:
        root = Path(tmp)
        cached = make_spec(root, args.rows, args.epochs, args.batch_size, True, "pair-cached", threads, hidden)
        manifest, _ = prepare_dataset(cached.data, cached.data_dir, log=lambda m: None)
        ray.init(num_cpus=max(4, os.cpu_count() or 1), object_store_memory=2 * 10**9, include_dashboard=False)
        rows = []
        for i in range(args.paired):
            pair = {}
            for cache in (True, False):
                label = "cached" if cache else "streamed"
                spec = make_spec(root, args.rows, args.epochs, args.batch_size, cache, f"pair-{label}-{i}", threads,
                                 hidden)
                pair[label] = run_ray(spec, manifest, label)
                print(f"pair {i}: {label:8} step {pair[label]['step_ms']:.3f} ms, start-up "
                      f"{pair[label]['startup_s']:.1f} s, epoch {pair[label]['epoch_s']:.2f} s", flush=True)
            rows.append(pair)
        ray.shutdown()
    report_pairs(args, rows, threads)
    print(f"start-up s (median): cached {statistics.median(p['cached']['startup_s'] for p in rows):.1f}, "
          f"streamed {statistics.median(p['streamed']['startup_s'] for p in rows):.1f}")


if __name__ == "__main__":
    main()
