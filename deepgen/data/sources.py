"""Readers for every data source a pipeline can name, each returning one `RawData`.

Nothing here downloads: digits ship with scikit-learn, everything else is a file the user points at.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from deepgen.config import (
    DigitsSource,
    IdxSource,
    ImageMaskSource,
    NpySource,
    ShapesSource,
    Source,
    TableSource,
)
from deepgen.errors import DataError, first_line


@dataclass
class RawData:
    """Rows as read from a source, before splitting and scaling."""

    x: np.ndarray  # (N, *shape), numeric
    y: np.ndarray | None  # (N,) labels, or None for unlabelled data
    shape: tuple[int, ...]  # one row: (D,) for tables, (C, H, W) for images
    divisor: float | None  # images: the fixed scale to [0, 1] (255, 16); tables: None -> min-max
    fingerprint: str  # hash of the source bytes
    feature_names: list[str] | None = None
    test: tuple[np.ndarray, np.ndarray | None] | None = None  # an official test split, if the source has one
    files: list[str] = field(default_factory=list)
    target: np.ndarray | None = None  # (N, *target_shape) per-row targets, e.g. segmentation masks


def read_source(source: Source) -> RawData:
    readers = {"digits": read_digits, "idx": read_idx_dir, "npy": read_npy, "table": read_table,
               "shapes": read_shapes, "image_masks": read_image_masks, "image_table": read_image_table}
    return readers[source.kind](source)


# --- digits ----------------------------------------------------------------------------------------


def read_digits(source: DigitsSource) -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    y = digits.target.astype(np.int64)
    return RawData(x=x, y=y, shape=x.shape[1:], divisor=16.0, fingerprint=_hash_arrays(x, y))


# --- IDX (MNIST layout) ----------------------------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")  # an IDX folder's four files, in the order they are read and hashed


def read_idx_header(f, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, data offset) from an open IDX file positioned at its start: magic 00 00 TYPE NDIM, then
    NDIM big-endian sizes. Leaves `f` at the first data byte."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    offset = 4 + 4 * head[3]
    sizes = f.read(4 * head[3])
    if len(sizes) < 4 * head[3]:
        raise DataError(f"{path}: truncated IDX file ({4 + len(sizes)} bytes, the header alone needs {offset})")
    dims = tuple(np.frombuffer(sizes, dtype=">i4").tolist())  # Python ints: no overflow below
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: IDX header has a negative size {dims}; the file is damaged")
    return np.dtype(IDX_DTYPES[head[2]]), dims, offset


def read_idx_file(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): the header (`read_idx_header`), then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            dtype, dims, _ = read_idx_header(f, path)
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from None
    if len(raw) != math.prod(dims) * dtype.itemsize:
        raise DataError(f"{path}: IDX header says {dims} but the file holds {len(raw)} data bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    # Some archives name the files with a dot: train-images.idx3-ubyte
    for candidate in sorted(directory.glob(stem.replace("-idx", ".idx") + "*")):
        return candidate
    raise DataError(f"{directory}: missing {stem}[.gz] (expected the MNIST file layout)")


def read_idx_dir(source: IdxSource) -> RawData:
    directory = Path(source.path).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: no such IDX directory (data.source.path)")
    files = {k: _find_idx(directory, k) for k in IDX_NAMES}
    x, y, xt, yt = (read_idx_file(p) for p in files.values())
    for images, labels, name in ((x, y, "train"), (xt, yt, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{directory}: {name} images {images.shape} and labels {labels.shape} do not match")
    divisor = 255.0 if x.dtype == np.uint8 else None
    return RawData(
        x=x[:, None], y=y.astype(np.int64), shape=(1, *x.shape[1:]), divisor=divisor,
        fingerprint=_hash_files(files.values()), test=(xt[:, None], yt.astype(np.int64)),
        files=[str(p) for p in files.values()],
    )


# --- .npy ------------------------------------------------------------------------------------------


def read_npy(source: NpySource) -> RawData:
    x = load_npy(source.path)
    if x.ndim not in (2, 3, 4) or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{source.path}: expected a numeric array of shape (N, D), (N, H, W) or (N, C, H, W), "
                        f"got {x.dtype} {x.shape}")
    if x.ndim == 3:
        x = x[:, None]
    y = None
    files = [source.path]
    if source.labels:
        y = load_npy(source.labels)
        files.append(source.labels)
        if y.shape != (len(x),):
            raise DataError(f"{source.labels}: expected {len(x)} labels, got shape {y.shape}")
        check_labels(y, source.labels)
    divisor = 255.0 if x.dtype == np.uint8 else None
    return RawData(x=x, y=y, shape=x.shape[1:], divisor=divisor, fingerprint=_hash_files(files), files=files)


def load_npy(path: str | Path) -> np.ndarray:
    """A .npy array (no pickled objects), or a DataError naming the file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{path}: no such file")
    with open(p, "rb") as f:
        if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            raise DataError(f"{path}: not a .npy file (no NUMPY header); write arrays with numpy.save")
        f.seek(0)
        try:
            return np.load(f, allow_pickle=False)
        except (ValueError, EOFError) as e:  # object arrays, a truncated file, a damaged header
            raise DataError(f"{path}: cannot read the .npy array ({first_line(e)})") from None


# --- CSV / Parquet tables --------------------------------------------------------------------------


def read_table(source: TableSource) -> RawData:
    table = load_table(source.path)
    names = table.column_names
    if source.label_column and source.label_column not in names:
        raise DataError(f"{source.path}: no label column {source.label_column!r} (columns: {', '.join(names)})")
    features = source.feature_columns or [
        n for n in names if n != source.label_column and _is_numeric(table.schema.field(n).type)
    ]
    missing = [c for c in features if c not in names]
    if missing:
        raise DataError(f"{source.path}: no feature column {missing[0]!r} (columns: {', '.join(names)})")
    if not features:
        raise DataError(f"{source.path}: no numeric feature columns")
    x = table_features(table, features, source.path)
    y = None
    if source.label_column:
        labels = table.column(source.label_column)
        if labels.null_count:
            raise DataError(f"{source.path}: column {source.label_column!r} has {labels.null_count} empty labels")
        y = labels.to_numpy(zero_copy_only=False)
        check_labels(y, f"{source.path}: column {source.label_column!r}")
    return RawData(x=x, y=y, shape=(len(features),), divisor=None, fingerprint=_hash_files([source.path]),
                   feature_names=features, files=[source.path])


def check_labels(y: np.ndarray, where: str) -> None:
    """Refuse NaN and infinite labels: each would count as a class of its own, or as no class at all."""
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{where} has {int((~np.isfinite(y)).sum())} NaN or infinite labels; "
                        "fix or drop those rows")


def load_table(path: str):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{path}: no such file")
    try:
        if p.suffix == ".csv":
            return pcsv.read_csv(p)
        if p.suffix == ".parquet" or p.is_dir():
            return pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for malformed files
        kind = "CSV" if p.suffix == ".csv" else "Parquet"
        raise DataError(f"{path}: cannot read {kind} file: {first_line(e)}") from None
    raise DataError(f"{path}: expected a .csv or .parquet file")


def table_features(table, columns: list[str], where: str) -> np.ndarray:
    """Stack numeric columns into (N, D) float32, refusing non-numeric or missing values."""
    cols = []
    for name in columns:
        col = table.column(name)
        if not _is_numeric(col.type):
            raise DataError(f"{where}: column {name!r} is {col.type}, expected numbers")
        if col.null_count:
            raise DataError(f"{where}: column {name!r} has {col.null_count} missing values")
        cols.append(col.to_numpy().astype(np.float32))
    return np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0), np.float32)


def _is_numeric(arrow_type) -> bool:
    import pyarrow.types as pat

    return pat.is_integer(arrow_type) or pat.is_floating(arrow_type) or pat.is_boolean(arrow_type)


# --- segmentation: images with masks ----------------------------------------------------------------


def read_shapes(source: ShapesSource) -> RawData:
    from deepgen.data.shapes import make_shapes

    x, masks = make_shapes(source.num_images, source.size, source.seed)
    return RawData(x=x, y=None, shape=x.shape[1:], divisor=1.0, fingerprint=_hash_arrays(x, masks),
                   target=masks.astype(np.float32))


def read_image_masks(source: ImageMaskSource) -> RawData:
    table = load_table(source.path)
    c, h, w = source.image_shape
    images = _list_column(table, source.image_column, c * h * w, source.path)
    masks = _list_column(table, source.mask_column, h * w, source.path)
    divisor = 255.0 if images.max(initial=0) > 1 else 1.0  # 8-bit pixels or already in [0, 1]
    return RawData(x=images.reshape(-1, c, h, w), y=None, shape=(c, h, w), divisor=divisor,
                   fingerprint=_hash_files([source.path]), files=[source.path],
                   target=(masks.reshape(-1, 1, h, w) != 0).astype(np.float32))


def read_image_table(source) -> RawData:
    """A Parquet table of flattened images (a list column) with an optional label column."""
    table = load_table(source.path)
    c, h, w = source.image_shape
    images = _list_column(table, source.image_column, c * h * w, source.path)
    y = None
    if source.label_column is not None:
        if source.label_column not in table.column_names:
            raise DataError(f"{source.path}: no label column {source.label_column!r} "
                            f"(columns: {', '.join(table.column_names)})")
        y = table.column(source.label_column).to_numpy(zero_copy_only=False)
        check_labels(y, source.path)
    divisor = 255.0 if images.max(initial=0) > 1 else 1.0  # 8-bit pixels or already in [0, 1]
    return RawData(x=images.reshape(-1, c, h, w), y=y, shape=(c, h, w), divisor=divisor,
                   fingerprint=_hash_files([source.path]), files=[source.path])


def _list_column(table, name: str, width: int, where: str) -> np.ndarray:
    import pyarrow.types as pat

    if name not in table.column_names:
        raise DataError(f"{where}: no column {name!r} (columns: {', '.join(table.column_names)})")
    col = table.column(name).combine_chunks()
    if not (pat.is_list(col.type) or pat.is_large_list(col.type) or pat.is_fixed_size_list(col.type)) \
            or not _is_numeric(col.type.value_type):
        raise DataError(f"{where}: column {name!r} is {col.type}, expected a list of numbers per row")
    lengths = col.value_lengths().to_numpy(zero_copy_only=False) if not pat.is_fixed_size_list(col.type) \
        else np.full(len(col), col.type.list_size)
    if col.null_count or (lengths != width).any():
        raise DataError(f"{where}: column {name!r} must hold {width} values in every row")
    values = col.flatten()  # a null or NaN in a mask would count as foreground (NaN != 0): refuse both
    if values.null_count:
        raise DataError(f"{where}: column {name!r} has {values.null_count} missing values inside its lists; "
                        "fix or drop those rows")
    x = values.to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: column {name!r} has {int((~np.isfinite(x)).sum())} NaN or infinite values "
                        "inside its lists; fix or drop those rows")
    return x.reshape(len(col), width)


# --- fingerprints ----------------------------------------------------------------------------------


def _hash_files(paths) -> str:
    """Content hash of files; a folder (a Parquet dataset) counts as its files in sorted order, by
    relative name and content, so renaming or adding a part file changes it."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        p = p.expanduser()
        for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
            if f != p:
                h.update(str(f.relative_to(p)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(partial(fh.read, 1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
