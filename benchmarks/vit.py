"""Image classification: the shipped ViT pipeline against the conv classifier deepgen already trains for its
Frechet distance, on the same splits, over several seeds.

    python benchmarks/vit.py [--datasets digits,mnist5k] [--seeds 0,1,2] [--split test|val] [--set FIELD=VALUE ...]

Protocol, per data set and seed: the data set is written as an MNIST-layout IDX directory with a stratified
train/t10k split drawn by the seed (benchmarks/anomaly.py's `image_source`), prepared by `prepare_dataset`
(validation carved out of train by the seed). Both classifiers learn from the train split only and are
scored on the evaluation split (test; `--split val` for choosing settings without touching test).

  vit   `pipelines/vit_digits.yaml` with only its data source, seeds and MNIST's patch size changed
        (7 x 7 patches on 28 x 28, 2 x 2 on 8 x 8: 16 tokens either way), trained by
        `deepgen.train.loop.train_loop` in a `LocalEnv` (the loop Ray Train runs, in one process, with the
        pipeline's rows per update), its kept epoch (best validation loss) evaluated
  conv  `deepgen.metrics.images.train_classifier` on the same train split with the protocol of the judge
        the GAN task trains for its Frechet distance (deepgen.metrics.judge: 30 epochs, at most 1,500 updates
        of 128 rows, cosine-decayed lr from 2e-3, width 32), seeded by the benchmark's seed

Tables give accuracy and macro F1 per seed, their mean, and the ViT's margin against each conv classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

from anomaly import image_source, machine  # noqa: E402

from deepgen import config  # noqa: E402
from deepgen.data.dataset import load_split  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.metrics import judge  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.tasks.bert import classification_metrics  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import load_model_weights, train_loop  # noqa: E402

PIPELINE = ROOT / "pipelines" / "vit_digits.yaml"
PATCH = {"digits": 2, "mnist5k": 7}  # 16 tokens either way


def vit_spec(source: dict, name: str, seed: int, root: Path, sets: list[str]) -> config.PipelineSpec:
    shipped = config.PipelineSpec.from_yaml(PIPELINE)
    rows_per_update = shipped.train.batch_size * shipped.scaling.num_workers
    overrides = [f"data.source={json.dumps(source)}", f"train.seed={seed}", f"data.seed={seed}",
                 f"model.patch_size={PATCH.get(name, shipped.model.patch_size)}", "scaling.num_workers=1",
                 f"train.batch_size={rows_per_update}", f"tracking.runs_dir={root / 'runs'}",
                 f"data.output={root / 'data' / Path(source['path']).stem}"]
    return config.PipelineSpec.from_yaml(PIPELINE, overrides + sets)


def run_vit(spec, manifest, split: str, root: Path) -> tuple[dict, int]:
    task = build_task(spec, manifest)
    with tempfile.TemporaryDirectory(dir=root) as ckpt:
        env = LocalEnv(spec.data_dir, spec.anomaly, ckpt, seed=spec.train.seed, keep=1)
        with contextlib.redirect_stdout(io.StringIO()):
            history = train_loop(spec, manifest, env)
        model = load_model_weights(env.latest_checkpoint(), task)["model"].eval()
    from deepgen.tasks.vit import ImageClassifier

    x, y = load_split(spec.data_dir, split)
    probs = ImageClassifier.probabilities_of(model, x)
    return classification_metrics(y.astype(np.int64), probs, task.num_classes), \
        int(history[-1].get("best_epoch", len(history)))


def run_conv(spec, manifest, split: str, seed: int) -> dict:
    """The judge's conv classifier (deepgen.metrics.judge's protocol), trained with the benchmark's seed."""
    shape = manifest.shape
    x_tr, y_tr = load_split(spec.data_dir, "train")
    x, y = load_split(spec.data_dir, split)
    k = int(y_tr.max()) + 1
    clf = judge.train_judge_classifier(torch.tensor(x_tr).view(-1, *shape), torch.tensor(y_tr.astype(np.int64)),
                                       k, seed=seed, augment=False)
    with torch.no_grad():
        probs = torch.cat([clf(torch.tensor(x[i:i + 512]).view(-1, *shape)).softmax(-1)
                           for i in range(0, len(x), 512)]).numpy()
    return classification_metrics(y.astype(np.int64), probs, k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,mnist5k", type=lambda s: [d for d in s.split(",") if d])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--mnist5k", metavar="CSV_GZ")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    args = p.parse_args()
    args.idx_dir = None
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"machine: {machine()}\ncommand: python {' '.join(sys.argv)}\nsplit: {args.split}", flush=True)
    with tempfile.TemporaryDirectory(prefix="deepgen-vit-bench-") as tmp:
        root = Path(tmp)
        for name in args.datasets:
            rows = {}
            for seed in args.seeds:
                source = image_source(name, root, seed, args)
                spec = vit_spec(source, name, seed, root, args.set)
                manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
                t0 = time.perf_counter()
                vit, kept = run_vit(spec, manifest, args.split, root)
                t1 = time.perf_counter()
                rows.setdefault("vit", []).append(vit)
                rows.setdefault("conv", []).append(run_conv(spec, manifest, args.split, seed))
                t2 = time.perf_counter()
                print(f"  {name} seed {seed}: vit {vit['accuracy']:.4f} (kept epoch {kept}, {t1 - t0:.0f} s), "
                      f"conv {rows['conv'][-1]['accuracy']:.4f} ({t2 - t1:.0f} s)", flush=True)
            m = spec.model.model_dump(exclude_defaults=True)
            print(f"\n### {name} ({args.split}; rows {manifest.rows}; seeds {args.seeds})\n")
            print(f"- vit setting: {PIPELINE.relative_to(ROOT)}: model {m}, train "
                  f"{spec.train.model_dump(exclude_defaults=True, exclude={'seed'})}\n")
            print("| model | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean accuracy | mean macro F1 |")
            print("|---|" + "---:|" * (len(args.seeds) + 2))
            for model, results in rows.items():
                acc = [r["accuracy"] for r in results]
                print(f"| {model} | " + " | ".join(f"{a:.4f}" for a in acc)
                      + f" | {np.mean(acc):.4f} | {np.mean([r['f1'] for r in results]):.4f} |")
            vit_acc = np.array([r["accuracy"] for r in rows["vit"]])
            for base in [k for k in rows if k != "vit"]:
                diff = vit_acc - np.array([r["accuracy"] for r in rows[base]])
                print(f"\n- vit - {base}: {100 * diff.mean():+.2f} points (paired per seed "
                      f"{', '.join(f'{100 * d:+.2f}' for d in diff)})")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
