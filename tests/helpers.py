"""Helpers the tests share: generated data, a small pipeline file, a tiny run of deepgen's own loop (no Ray),
and a simulated race between two writers. Fixtures stay in conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml


def bar_images(n: int, seed: int, anomaly_fraction: float = 0.2, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 images: label 0 = a horizontal bar, label 1 = a vertical bar (the anomaly)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < anomaly_fraction).astype(np.int64)
    images = rng.integers(0, 40, size=(n, size, size)).astype(np.float32)
    pos = rng.integers(1, size - 1, size=n)
    for i in range(n):
        if labels[i] == 0:
            images[i, pos[i], :] = 255
        else:
            images[i, :, pos[i]] = 255
    return images.astype(np.uint8), labels


def bars_source(root: Path, n: int, seed: int) -> dict:
    """`n` bar images and their labels written to ROOT/x.npy and ROOT/y.npy: the pipeline's npy source."""
    x, y = bar_images(n, seed=seed)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    return {"kind": "npy", "path": str(root / "x.npy"), "labels": str(root / "y.npy")}


def write_pipeline(path: Path, **sections) -> Path:
    """A small valid pipeline spec; keyword sections replace the defaults."""
    spec = {
        "name": "t",
        "data": {"source": {"kind": "digits"}},
        "model": {"kind": "dense_autoencoder", "hidden": [16], "latent_dim": 4},
        "train": {"epochs": 2, "batch_size": 32},
        "scaling": {"num_workers": 1},
        "anomaly": {"anomalous_labels": [9]},
        "registry": {"model_name": "t-model"},
        "tracking": {"runs_dir": str(path.parent / "runs")},
    }
    spec.update(sections)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def race(monkeypatch, out: Path, other_prepare) -> None:
    """Make `other_prepare()` (another process preparing `out`) swap its copy in just before this one does."""
    real_rename, pending = Path.rename, [other_prepare]

    def rename(self, target):
        if pending and Path(target) == out:
            pending.pop()()  # its own rename into `out` finds `pending` empty and goes through
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)


def train_locally(spec, checkpoints: Path, on_epoch=None):
    """Prepare the spec's data and train it through deepgen's loop in this process (LocalEnv, checkpoints
    under `checkpoints`): (history, env, manifest)."""
    from deepgen.data.prepare import prepare_dataset
    from deepgen.train.env import LocalEnv
    from deepgen.train.loop import train_loop

    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    env = LocalEnv(spec.data_dir, spec.anomaly, checkpoints, seed=spec.train.seed)
    return train_loop(spec, manifest, env, on_epoch=on_epoch), env, manifest
