"""How good is the judge of the GAN figures? The classifier `deepgen.metrics.judge` trains once per prepared
data set (its pooled features give the Frechet distance, its predictions a conditional GAN's per-label
accuracy), trained by the shipped protocol and by variants of it, on the GAN benchmark's data and splits.

    python benchmarks/judge.py [--datasets digits,mnist5k] [--seeds 0,1,2] [--split val|test]
                               [--variant NAME:FIELD=VALUE,... ...]

Per data set, seed and variant: the train split of `benchmarks/gan_quality.py`'s preparation for that seed
(digits at 32 x 32; MNIST-5k 28 x 28 resized to 32) trains the classifier with the judge's protocol (Adam,
batch 128, cosine-decayed lr from 2e-3, pixel noise and shifts), seeded by the seed; it is scored on the
evaluation split clean and with Gaussian pixel noise of std 0.05 and 0.1 (what faint speckle in a
generated image does to it). Variant fields: min_steps, max_steps, epochs, width, depth (convs per
stage). The shipped protocol is the variant `shipped` (no changes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from anomaly import machine  # noqa: E402
from gan_quality import DATASETS, pipeline_spec  # noqa: E402

from deepgen.data.dataset import load_split  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.metrics import images as metrics  # noqa: E402
from deepgen.metrics import judge as judges  # noqa: E402

FIELDS = {"min_steps": int, "max_steps": int, "epochs": int, "width": int, "depth": int}
NOISE = (0.05, 0.1)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    changes = {}
    for item in filter(None, body.split(",")):
        field, _, value = item.partition("=")
        if field not in FIELDS:
            raise SystemExit(f"benchmarks/judge.py: error: --variant {text}: unknown field {field!r}; "
                             f"fields: {', '.join(FIELDS)}")
        changes[field] = FIELDS[field](value)
    return name, changes


def noisy(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def run(dataset: str, seed: int, variants: list[tuple[str, dict]], split: str, root: Path) -> list[dict]:
    spec = pipeline_spec("dcgan", dataset, seed, root, [])
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    shape = tuple(manifest.shape)
    x_train, y_train = load_split(spec.data_dir, "train")
    x_eval, y_eval = load_split(spec.data_dir, split)
    train, labels = judges.unit_images(x_train, shape), torch.tensor(y_train)
    evals, eval_labels = judges.unit_images(x_eval, shape), torch.tensor(y_eval)
    rows = []
    for name, changes in variants:
        start, cpu = time.perf_counter(), time.process_time()
        clf = judges.train_judge_classifier(train, labels, int(max(y_train.max(), y_eval.max())) + 1, seed=seed,
                                            **changes)
        row = {"dataset": dataset, "seed": seed, "split": split, "variant": name, "changes": changes,
               "train_rows": len(train), "eval_rows": len(evals),
               "accuracy": metrics.classifier_accuracy(clf, evals, eval_labels),
               **{f"accuracy_noise_{std}": metrics.classifier_accuracy(clf, noisy(evals, std, seed), eval_labels)
                  for std in NOISE},
               "train_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in sub})
        out += [f"\n### {dataset} ({sub[0]['split']} split, {sub[0]['eval_rows']} images, seeds {seeds})\n",
                "| variant | accuracy, mean (min-max) | noise 0.05 | noise 0.1 | CPU s per run |",
                "|---|---:|---:|---:|---:|"]
        for name in dict.fromkeys(r["variant"] for r in sub):
            v = [r for r in sub if r["variant"] == name]
            acc = [r["accuracy"] for r in v]
            cells = [f"{np.mean(acc):.4f} ({min(acc):.4f}-{max(acc):.4f})"]
            cells += [f"{np.mean([r[f'accuracy_noise_{s}'] for r in v]):.4f}" for s in NOISE]
            cells += [f"{np.mean([r['cpu_s'] for r in v]):.0f}"]
            label = f"{name} {json.dumps(v[0]['changes'])}" if v[0]["changes"] else name
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), type=lambda s: [d for d in s.split(",") if d])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                   help="a protocol variant beside the shipped one, e.g. deep:depth=2,min_steps=1500")
    p.add_argument("--no-shipped", action="store_true", help="only the --variant runs, not the shipped protocol")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", help="where the prepared data goes; default: temporary")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = [] if args.no_shipped else [("shipped", {})]
    variants += [parse_variant(v) for v in args.variant]
    if not variants:
        p.error("--no-shipped needs at least one --variant")
    print(f"machine: {machine()}\ncommand: python {' '.join(sys.argv)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepgen-judge-") as tmp:
        root = Path(args.workdir or tmp).resolve()
        for dataset in args.datasets:
            for seed in args.seeds:
                rows += run(dataset, seed, variants, args.split, root)
    print(table(rows))


if __name__ == "__main__":
    main()
