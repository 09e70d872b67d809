"""Source -> train/val/test Parquet splits + manifest, written atomically.

The layout of a prepared dataset:

    DIR/train.parquet  DIR/val.parquet  DIR/test.parquet   columns: features (fixed-size list<float32>), label
    DIR/manifest.json  schema, row counts, row shape, scaler, source fingerprint

Everything is written into a hidden sibling folder and renamed into place at the end, so a failure
leaves either the previous dataset or nothing, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from deepgen.config import DataSpec
from deepgen.data.dataset import MANIFEST, splits_present, write_atomically
from deepgen.data.sources import RawData, read_source
from deepgen.errors import DataError

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 2  # 2: manifests record binary_features


class Scaler(BaseModel):
    """Maps raw features to [0, 1]: a fixed divisor for images, min-max (fit on train) for tables."""

    divisor: float | None = None
    minimum: list[float] | None = None
    maximum: list[float] | None = None

    @classmethod
    def fit(cls, raw: RawData, x_train: np.ndarray) -> Scaler:
        if raw.divisor:
            return cls(divisor=raw.divisor)
        flat = x_train.reshape(len(x_train), -1)
        return cls(minimum=flat.min(0).tolist(), maximum=flat.max(0).tolist())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) raw -> (N, D) float32; table values beyond the training range fall outside [0, 1]."""
        x = x.astype(np.float32, copy=False)
        if self.divisor:
            return x / np.float32(self.divisor)
        lo, span = self._range()
        return (x - lo) / span

    def rescale(self, x: np.ndarray, scaled_by: Scaler) -> np.ndarray:
        """Rows that `scaled_by` scaled (another dataset's prepared split) -> rows as this scaler scales
        them: a table's min-max range moves when its data gains rows."""
        return x if scaled_by == self else self.apply(scaled_by.invert(x))

    def invert(self, x: np.ndarray) -> np.ndarray:
        """(N, D) scaled -> (N, D) raw float32: what `apply` was given."""
        x = x.astype(np.float32, copy=False)
        if self.divisor:
            return x * np.float32(self.divisor)
        lo, span = self._range()
        return x * span + lo

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.minimum, np.float32)
        span = np.asarray(self.maximum, np.float32) - lo
        return lo, np.where(span > 0, span, 1).astype(np.float32)


class Manifest(BaseModel):
    format: int = FORMAT_VERSION
    fingerprint: str  # source bytes + data spec: equal fingerprints mean equal outputs
    source_fingerprint: str
    shape: list[int]
    rows: dict[str, int]
    label_type: str | None  # "int", "str", "float", "bool" or None for unlabelled data
    feature_names: list[str] | None
    target_shape: list[int] | None = None  # per-row target, e.g. a (1, H, W) segmentation mask
    scaler: Scaler
    arrow_schema: dict[str, str]  # column -> Arrow type
    # the Ray Data prepare: split -> its part files (name, rows, bytes) under DIR/SPLIT.parquet/; None: one
    # file per split (DIR/SPLIT.parquet)
    files: dict[str, list[dict]] | None = None
    # every scaled training value is 0 or 1: the one case where a Bernoulli likelihood (sigmoid + BCE)
    # describes the data; grey levels and table values get a Gaussian one (mse) under `loss: auto`
    binary_features: bool = False

    @property
    def num_features(self) -> int:
        return int(np.prod(self.shape))


def manifest_from_dict(raw: dict):
    """A manifest passed around as JSON: an image/table `Manifest` or a text one (`TextManifest`)."""
    if "task" in raw:
        from deepgen.data.text import TextManifest

        return TextManifest.model_validate(raw)
    return Manifest.model_validate(raw)


def read_manifest(directory: str | Path) -> Manifest | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError:
        return None  # an older or damaged manifest: prepare again


def dataset_fingerprint(data: DataSpec, source_fingerprint: str, engine: str = "memory") -> str:
    """Source bytes + spec (+ the engine, when Ray Data wrote it: its split is by row hash, not a permutation)."""
    spec = data.model_dump(mode="json", exclude={"output", "engine"})
    key = {"spec": spec, "source": source_fingerprint, "format": FORMAT_VERSION}
    if engine != "memory":
        key["engine"] = engine
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


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
    columns = {"features": _fixed_size_list(x)}
    if target is not None:
        columns["target"] = _fixed_size_list(target.reshape(len(target), -1))
    if y is not None:
        columns["label"] = pa.array(y.tolist() if y.dtype.kind in "OUS" else y)
    return pa.table(columns).replace_schema_metadata({b"deepgen.prepared": b"1"})


def _fixed_size_list(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel(), pa.float32()), x.shape[1])


def _describe(data: DataSpec) -> str:
    return getattr(data.source, "path", None) or f"data.source ({data.source.kind})"
