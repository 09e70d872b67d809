"""The judge of generated images: one FeatureClassifier per prepared data set, trained once on its train
split and cached beside the prepared data, so every GAN trained on that data is measured by the same
network (its pooled features for the Frechet distance, its predictions for a conditional GAN's per-label
accuracy). Its accuracy on the whole test split travels with it and is reported with every figure.

The cache key is the prepared data's fingerprint (source bytes and data spec) and the judge protocol
below: re-preparing other data into the same folder, or changing the protocol, trains a new judge.

Protocol (version 5): a FeatureClassifier of two 3 x 3 convs per stage (six in all; the three-conv net of
protocol 4 read validation digits and MNIST-5k at 0.956 and 0.955, this one at 0.993 and 0.987:
benchmarks/README.md, "The judge"); labels when the data has integer labels, else rotations (self-supervised,
square images); JUDGE_EPOCHS epochs (at most JUDGE_STEPS Adam updates) of batch 128 with a cosine-decayed
learning rate from 2e-3, seed 0, on at most 20,000 train rows, each batch augmented by pixel noise (std ~ U(0,
0.1)) and shifts of up to a 16th of the side (2 pixels at 32 x 32), so faint noise in a generated image does
not change what the judge reads (without it, real MNIST digits with noise of std 0.05 were read at 0.48
accuracy). Digits (about 1,200 train rows) get 300 updates, MNIST-5k (3,400) 810, a 60,000-image set 1,500 (10
epochs of a 20,000-row subset).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepgen.data.dataset import iter_split, load_split, split_labels, split_rows, take_rows
from deepgen.metrics import images as metrics

JUDGE_DIR = "judge"  # under the prepared data folder
JUDGE_EPOCHS = 30
JUDGE_STEPS = 1500  # at most; the old protocol's 200 updates left a small CNN at 0.70 on a clothing set
JUDGE_MIN_STEPS = 0  # at least this many updates (more epochs on a small train split)
JUDGE_WIDTH = 32
JUDGE_DEPTH = 2  # convs per stage of the FeatureClassifier: six convs (0.99 on digits and MNIST-5k val; three: 0.96)
JUDGE_SEED = 0
JUDGE_MAX_ROWS = 20_000  # train rows at most: a seeded subset, the only rows read of a larger split
LR, BATCH_SIZE = 2e-3, 128
JUDGE_NOISE = 0.1  # augmentation: pixel noise of std ~ U(0, 0.1) per image
JUDGE_SHIFT = 1 / 16  # and shifts of up to this share of the image side (2 pixels at 32, none at 8 x 8)


def train_judge_classifier(images: torch.Tensor, labels: torch.Tensor | None, num_classes: int | None,
                           seed: int = JUDGE_SEED, augment: bool = True, device: str = "cpu",
                           subset_of: int | None = None, **protocol_changes) -> metrics.FeatureClassifier:
    """A FeatureClassifier trained by the judge's protocol on images (N, C, H, W) in [0, 1]; `augment=False`
    leaves out the pixel noise and shifts (a clean classifier to compare other classifiers with).
    `protocol_changes` (min_steps, max_steps, width, depth, epochs) are for benchmarks/judge.py's search.
    device: where the updates run (the same batches on any device; the weights agree up to float rounding).
    subset_of N: `images` are the JUDGE_MAX_ROWS rows of a split of N that the protocol trains on
    (`metrics.training_subset`), read alone (see train_classifier)."""
    side = min(images.shape[2:])
    settings = {"epochs": JUDGE_EPOCHS, "min_steps": JUDGE_MIN_STEPS, "max_steps": JUDGE_STEPS,
                "width": JUDGE_WIDTH, "depth": JUDGE_DEPTH} | protocol_changes
    return metrics.train_classifier(images, labels, num_classes=num_classes, seed=seed, lr=LR,
                                    batch_size=BATCH_SIZE, cosine=True, noise=JUDGE_NOISE if augment else 0.0,
                                    shift=int(JUDGE_SHIFT * side) if augment else 0, device=device,
                                    max_rows=JUDGE_MAX_ROWS, subset_of=subset_of, **settings)


def test_accuracy(clf: metrics.FeatureClassifier, data_dir: str | Path, shape) -> float:
    """The classifier's accuracy on the whole test split, read chunk by chunk."""
    hits = rows = 0
    for x, y in iter_split(data_dir, "test"):
        hits += metrics.classifier_hits(clf, unit_images(x, shape), torch.tensor(y))
        rows += len(x)
    return hits / rows


def protocol() -> dict:
    """What the cached judge depends on besides the data (read at call time)."""
    return {"steps": JUDGE_STEPS, "min_steps": JUDGE_MIN_STEPS, "epochs": JUDGE_EPOCHS, "width": JUDGE_WIDTH,
            "depth": JUDGE_DEPTH, "seed": JUDGE_SEED,
            "schedule": "cosine", "lr": LR, "batch_size": BATCH_SIZE, "noise": JUDGE_NOISE, "shift": JUDGE_SHIFT,
            "version": 5}


@dataclass
class Judge:
    classifier: metrics.FeatureClassifier
    labelled: bool  # trained on labels (else on rotations)
    num_classes: int
    test_accuracy: float | None  # on the whole test split (labelled data only)
    path: Path

    def describe(self) -> str:
        target = "labels" if self.labelled else "rotations"
        acc = "" if self.test_accuracy is None else f", test accuracy {self.test_accuracy:.4f}"
        return (f"{describe_protocol()} on the train split's {target}, seed {JUDGE_SEED}{acc}; "
                f"cached at {JUDGE_DIR}/{self.path.name}")


def describe_protocol() -> str:
    return (f"FeatureClassifier (width {JUDGE_WIDTH}, {JUDGE_DEPTH} convs per stage, pooled conv features) "
            f"trained {JUDGE_EPOCHS} epochs "
            f"(at most {JUDGE_STEPS} updates; pixel noise up to {JUDGE_NOISE}, shifts up to 1/16 of the side)")


def is_labelled(y: np.ndarray | None) -> bool:
    return y is not None and np.issubdtype(np.asarray(y).dtype, np.integer)


def judge_path(data_dir: str | Path, fingerprint: str) -> Path:
    key = hashlib.sha256(json.dumps({"data": fingerprint, **protocol()}, sort_keys=True).encode()).hexdigest()
    return Path(data_dir) / JUDGE_DIR / f"judge-{key[:16]}.pt"


def unit_images(rows: np.ndarray, shape) -> torch.Tensor:
    """Prepared rows (N, C*H*W) in [0, 1] -> (N, C, H, W) float32 (a copy: Arrow arrays are read-only)."""
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), *shape)


def load_or_train(data_dir: str | Path, fingerprint: str, shape, num_classes: int | None = None,
                  device: str = "cpu") -> Judge:
    """The cached judge of the prepared data in `data_dir`, trained (on `device`) and written (atomically) on
    first use. A pipeline trains it before its workers start (GanTask.make_data_aid); a benchmark or a
    run whose data was prepared otherwise trains it here on first use."""
    path = judge_path(data_dir, fingerprint)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        clf = metrics.FeatureClassifier(shape[0], saved["num_classes"], JUDGE_WIDTH, saved.get("depth", 1))
        clf.load_state_dict(saved["state"])
        return Judge(clf.eval(), saved["labelled"], saved["num_classes"], saved["test_accuracy"], path)
    # Memory: at most JUDGE_MAX_ROWS train rows (a larger split is read for those rows only) and one chunk
    # of the test split at a time, whatever the data's size.
    rows = split_rows(data_dir, "train")
    keep = metrics.training_subset(rows, JUDGE_MAX_ROWS, JUDGE_SEED)
    x_train, y_train = load_split(data_dir, "train") if keep is None else take_rows(data_dir, "train", keep.numpy())
    y_test = split_labels(data_dir, "test")
    labelled = is_labelled(y_train) and is_labelled(y_test)
    if labelled:
        num_classes = num_classes or int(max(y_train.max(), y_test.max(initial=0))) + 1
    clf = train_judge_classifier(unit_images(x_train, shape), torch.tensor(y_train) if labelled else None,
                                 num_classes, device=device, subset_of=None if keep is None else rows)
    accuracy = test_accuracy(clf, data_dir, shape) if labelled and len(y_test) else None
    classes = clf.head.out_features
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save({"state": clf.state_dict(), "labelled": labelled, "num_classes": classes, "depth": clf.depth,
                "test_accuracy": accuracy, "protocol": protocol(), "data_fingerprint": fingerprint}, tmp)
    os.replace(tmp, path)  # a reader sees the whole file or none
    return Judge(clf, labelled, classes, accuracy, path)
