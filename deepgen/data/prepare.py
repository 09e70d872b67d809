"""Source -> train/val/test Parquet splits + manifest, written atomically.

The layout of a prepared dataset:

    DIR/train.parquet  DIR/val.parquet  DIR/test.parquet   columns: features (fixed-size list<float32>), label
    DIR/manifest.json  schema, row counts, row shape, scaler, source fingerprint

Everything is written into a hidden sibling folder and renamed into place at the end, so a failure
leaves either the previous dataset or nothing, never a half-written one. What a manifest holds is
deepgen.data.manifest; large table, .npy, IDX and image-table sources go through Ray Data (deepgen.data.prepare_ray).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from deepgen.config import DataSpec
from deepgen.data.dataset import fixed_size_list, splits_present, write_atomically
from deepgen.data.manifest import SPLITS, Manifest, Scaler, dataset_fingerprint, read_manifest
from deepgen.data.sources import RawData, read_source
from deepgen.errors import DataError


def prepare_dataset(data: DataSpec, out_dir: str | Path, log=print) -> tuple[Manifest, bool]:
    """Write the splits of `data` to `out_dir` unless an up-to-date copy is there. Returns (manifest, wrote)."""
    if data.is_text:
        from deepgen.data.text import prepare_text

        return prepare_text(data.source, out_dir, data.text, val_fraction=data.val_fraction,
                            test_fraction=data.test_fraction, seed=data.seed, log=log)
    from deepgen.data.prepare_ray import prepare_with_ray_data, use_ray_data

    if use_ray_data(data):  # sources larger than memory: streamed through Ray Data's readers and writers
        return prepare_with_ray_data(data, out_dir, log)
    out_dir = Path(out_dir)
    raw = read_source(data.source)
    fingerprint = dataset_fingerprint(data, raw.fingerprint)
    raw.y, label_type = label_kind(raw.y)
    current = read_manifest(out_dir)
    # an older prepare recorded float and bool labels as "int": such a copy is stale, whatever its fingerprint
    if current is not None and current.fingerprint == fingerprint and current.label_type == label_type \
            and splits_present(out_dir, current.rows):
        log(f"prepare: {out_dir} is up to date (fingerprint {fingerprint[:12]}), nothing to do")
        return current, False

    check_finite(raw.x, data)
    if raw.test is not None:
        check_finite(raw.test[0], data)
    if data.resize:
        raw = resize_images(raw, data.resize)
    splits = split_rows(raw, data)
    scaler = Scaler.fit(raw, splits["train"][0])
    tables = {name: to_arrow(scaler.apply(x.reshape(len(x), -1)), y, t) for name, (x, y, t) in splits.items()}
    x_train = tables["train"].column("features").combine_chunks().flatten().to_numpy()
    manifest = Manifest(
        fingerprint=fingerprint, source_fingerprint=raw.fingerprint, shape=list(raw.shape),
        binary_features=is_binary(x_train),
        rows={k: t.num_rows for k, t in tables.items()}, label_type=label_type,
        feature_names=raw.feature_names, scaler=scaler,
        target_shape=None if raw.target is None else list(raw.target.shape[1:]),
        arrow_schema={f.name: str(f.type) for f in tables["train"].schema},
    )
    write_atomically(out_dir, tables, manifest)
    log(f"prepare: wrote {out_dir} ({', '.join(f'{k} {v}' for k, v in manifest.rows.items())} rows)")
    return manifest, True


def is_binary(values: np.ndarray) -> bool:
    """Whether every value is exactly 0 or 1 (binarised images, indicator tables)."""
    return bool(len(values)) and bool(np.isin(values, (0.0, 1.0)).all())


def label_kind(y: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """(labels, manifest label_type). Only integer labels are "int", the class ids a conditional GAN needs;
    whole-valued floats (a CSV column of 0.0, 1.0) become int64 so they count as class ids too."""
    if y is None:
        return None, None
    kind = y.dtype.kind
    if kind in "iu":
        return y, "int"
    if kind == "f" and np.all(y == np.round(y)) and np.abs(y).max(initial=0) <= 2**53:
        return y.astype(np.int64), "int"
    return y, {"f": "float", "b": "bool", "O": "str", "U": "str", "S": "str"}.get(kind, y.dtype.name)


def resize_images(raw: RawData, side: int) -> RawData:
    """Images (N, C, H, W) -> (N, C, side, side), bilinear (antialiased when shrinking); masks nearest."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    if len(raw.shape) != 3:
        raise DataError(f"data.resize: the source has rows of shape {raw.shape}, not images (C, H, W)")

    def resize(x: np.ndarray, mode: str) -> np.ndarray:  # (N, C, H, W) -> (N, C, side, side)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if mode == "nearest":
            return F.interpolate(t, size=(side, side), mode="nearest").numpy()
        shrink = side < t.shape[-1]
        out = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink)
        return out.clamp(float(x.min()), float(x.max())).numpy()  # no overshoot beyond the source's range

    test = None if raw.test is None else (resize(raw.test[0], "bilinear"), raw.test[1])
    target = None if raw.target is None else resize(raw.target, "nearest")
    return dataclasses.replace(raw, x=resize(raw.x, "bilinear"), shape=(raw.shape[0], side, side), test=test,
                               target=target)


def split_rows(raw: RawData, data: DataSpec) -> dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Random split with a seed; an official test split (IDX t10k) is kept as the test split."""
    rng = np.random.default_rng(data.seed)
    n = len(raw.x)
    order = rng.permutation(n)
    if raw.test is not None:
        n_val = int(round(n * data.val_fraction))
        parts = {"val": order[:n_val], "train": order[n_val:]}
    else:
        n_test = int(round(n * data.test_fraction))
        n_val = int(round(n * data.val_fraction))
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    pick = lambda a, idx: None if a is None else a[idx]  # noqa: E731
    splits = {k: (raw.x[idx], pick(raw.y, idx), pick(raw.target, idx)) for k, idx in parts.items()}
    if raw.test is not None:
        splits["test"] = (*raw.test, None)
    for name in SPLITS:
        if len(splits[name][0]) == 0:
            raise DataError(f"data: the {name} split would be empty ({n} rows in the source); "
                            "give more rows or change data.val_fraction / data.test_fraction")
    return {name: splits[name] for name in SPLITS}


def check_finite(x: np.ndarray, data: DataSpec) -> None:
    """Refuse NaN and infinities: one of them turns every loss it touches into NaN."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    flat = x.reshape(len(x), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{_describe(data)}: non-finite value ({flat[row, col]}) in the features "
                        f"({int(bad.any(1).sum())} rows, first at row {row}, feature {col}); clean or drop those rows")


def to_arrow(x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None = None) -> pa.Table:
    """(N, D) float32 -> a table with a fixed-size-list `features` column, `label` and `target` if given."""
    columns = {"features": fixed_size_list(x)}
    if target is not None:
        columns["target"] = fixed_size_list(target.reshape(len(target), -1))
    if y is not None:
        columns["label"] = pa.array(y.tolist() if y.dtype.kind in "OUS" else y)
    return pa.table(columns).replace_schema_metadata({b"deepgen.prepared": b"1"})


def _describe(data: DataSpec) -> str:
    return getattr(data.source, "path", None) or f"data.source ({data.source.kind})"
