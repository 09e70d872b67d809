"""How much the real-vs-real floor of the GAN benchmarks moves with the train images drawn: per prepared
split (gan_quality.py's data, splits and cached judge), the FD of D independent draws of N train images
against the N evaluated rows, beside the floor GanTask.evaluate reports (frechet_figures: the mean of
FID_DRAWS draws, in its own fixed order). No model is trained.

    python benchmarks/gan_floor.py --workdir W [--datasets digits,mnist5k] [--seeds 0,1,2] [--draws 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gan_quality import DATASETS, pipeline_spec  # noqa: E402

from deepgen.data.dataset import sample_rows  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.metrics import images as metrics  # noqa: E402
from deepgen.metrics import judge as judges  # noqa: E402
from deepgen.tasks.gan import FID_SAMPLES, SEED, frechet_figures  # noqa: E402


def floors(data_dir: Path, shape, fingerprint: str, split: str, draws: int) -> dict:
    judge = judges.load_or_train(data_dir, fingerprint, shape)
    features = lambda rows: metrics.classifier_features(judge.classifier, judges.unit_images(rows, shape))  # noqa: E731
    real_rows, _ = sample_rows(data_dir, split, FID_SAMPLES, np.random.default_rng(SEED))
    real, n = features(real_rows), len(real_rows)
    one = [metrics.frechet_distance(real, features(sample_rows(data_dir, "train", n,
                                                               np.random.default_rng(100 + k))[0]))
           for k in range(draws)]
    reported, _ = frechet_figures(judge.classifier, data_dir, split, shape, lambda k, n, y: torch.zeros(n, *shape))
    return {"n": n, "reported_floor": reported["frechet_distance_train_vs_test"], "draws_mean": float(np.mean(one)),
            "draws_sd": float(np.std(one, ddof=1)), "draws_min": min(one), "draws_max": max(one)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="prepared data and judges (gan_quality.py's --workdir)")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--draws", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.workdir).resolve()
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            spec = pipeline_spec("dcgan", dataset, seed, root, [])
            manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
            row = floors(Path(spec.data_dir), tuple(manifest.shape), manifest.fingerprint, args.split, args.draws)
            print(json.dumps({"dataset": dataset, "seed": seed, **{k: round(v, 4) for k, v in row.items()}}),
                  flush=True)


if __name__ == "__main__":
    main()
