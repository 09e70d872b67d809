"""Choosing a GAN recipe by its update budget: one GAN pipeline's networks trained by `GanTask.train_step`
directly (one process, no Ray, no MLflow) on a prepared data set, judged on the VALIDATION split at several
update counts of the same run, so one run gives the quality-against-budget curve of a setting.

    python benchmarks/gan_recipe.py --dataset digits --pipeline gan_conditional.yaml --rows 64 \
        --at 400,800,1200 [--set model.conditioning=acgan ...] [--out recipe.jsonl] [--grids DIR]

Same data, splits and judge as `gan_quality.py` (its `pipeline_spec` prepares the data set of --seed; the
judge is the one cached with the prepared data). Batches: --rows rows per update, drawn as the loop draws
them (a fresh permutation per epoch, the last batch of an epoch smaller); a learning-rate schedule
(train.lr_decay) is sized to the pipeline's train.epochs of them, whatever --at says. At each update count in --at:
`GanTask.evaluate(split="val")` (Frechet distance of N = min(val rows, 1000) val images against N samples,
its ratio to the train-vs-val floor, and for cgan the judge's accuracy on samples of each label), and the
wall and CPU seconds of training so far (evaluation excluded; on a shared machine the CPU seconds, one
torch thread, are what a quiet one would take). With model.ema_decay, G's own weights are judged
too (`g_frechet_distance`, `g_conditional_accuracy`). Never reads the test split except for the judge's
own test accuracy, which the judge cache records once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gan_quality import DATASETS, pipeline_spec  # noqa: E402

from deepgen.data.dataset import load_split  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.tasks.gan import SEED, sample_grid  # noqa: E402


def batches(x: torch.Tensor, y: torch.Tensor | None, rows: int, seed: int):
    """Endless epochs of shuffled batches of `rows` rows (the last batch of an epoch the remainder)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), rows):
            idx = order[i:i + rows]
            yield {"features": x[idx]} | ({} if y is None else {"label": y[idx]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--pipeline", default="gan_conditional.yaml", help="a file in pipelines/")
    p.add_argument("--seed", type=int, default=0, help="draws the split and seeds the models")
    p.add_argument("--rows", type=int, default=64, help="rows per update")
    p.add_argument("--at", default="400,800,1200", type=lambda s: [int(v) for v in s.split(",")],
                   help="update counts at which to judge on the validation split")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--workdir", required=True, help="prepared data and judges (reused across runs)")
    p.add_argument("--out", help="append one JSON line per judged update count")
    p.add_argument("--grids", help="write the sample grid of each judged update count into this folder")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.workdir).resolve()
    model = {"gan_dcgan.yaml": "dcgan", "gan_conditional.yaml": "conditional", "gan_lapgan.yaml": "lapgan"}
    spec = pipeline_spec(model[args.pipeline], args.dataset, args.seed, root, args.set)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    task.spec = SimpleNamespace(name=spec.name, model=spec.model, train=spec.train)  # no per-epoch watching
    torch.manual_seed(args.seed)
    models = task.build_models()
    optimizers = task.build_optimizers(models)
    x, y = load_split(spec.data_dir, "train")
    x = torch.tensor(x)
    y = torch.tensor(y).long() if "label" in task.batch_columns else None
    stream = batches(x, y, args.rows, args.seed)
    task.set_batches_per_epoch(-(-len(x) // args.rows))  # a schedule (train.lr_decay) ends at train.epochs
    train_s, cpu_s, done = 0.0, 0.0, 0
    for at in args.at:
        for m in models.values():
            m.train()
        start, cpu = time.perf_counter(), time.process_time()
        while done < at:
            out = task.train_step(models, optimizers, next(stream))
            done += 1
        task.guard.flush()
        train_s += time.perf_counter() - start
        cpu_s += time.process_time() - cpu
        result = task.evaluate(models, Path(spec.data_dir), split="val").metrics
        if "generator_ema" in models:  # G's own weights too, judged the same way: what the EMA adds
            own = task.evaluate({k: v for k, v in models.items() if k != "generator_ema"}, Path(spec.data_dir),
                                split="val").metrics
            result |= {f"g_{k}": own[k] for k in ("frechet_distance", "conditional_accuracy") if k in own}
        row = {"dataset": args.dataset, "pipeline": args.pipeline, "seed": args.seed, "rows": args.rows,
               "sets": args.set, "updates": done, "train_s": round(train_s, 1),
               "cpu_s": round(cpu_s, 1),
               "d_real": round(float(out["d_real"]), 3), "d_fake": round(float(out["d_fake"]), 3),
               **{k: round(float(v), 4) for k, v in result.items()}}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        if args.grids:
            from PIL import Image

            G = task.sampler(models)
            columns = getattr(G.config, "num_classes", 0) or 8
            grid = sample_grid(G, 8 * columns, columns=columns, seed=SEED + 1)
            changes = [f"{s.split('=')[0].split('.')[-1]}-{s.split('=', 1)[1]}" for s in args.set]
            name = "_".join([args.dataset, Path(args.pipeline).stem, *changes, str(done)]).replace("/", "-")
            Path(args.grids).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(grid)).save(Path(args.grids) / f"{name}.png")


if __name__ == "__main__":
    main()
