"""Prepare a source larger than memory through Ray Data (`data.engine: ray_data`, or `auto` past
RAY_DATA_MIN_BYTES of source files): a table (CSV / Parquet files or folders), a .npy array (with its labels),
an IDX folder (MNIST layout) or an image table (Parquet, a list of pixels per row).

`plan_source` checks the source's files before anything is read (a table's schemas, an array's headers: an
unreadable file, a schema mismatch, a truncated file are one line naming it) and says how its rows are read:
tables and image tables by Ray Data's own readers (`read_parquet`, `read_csv`), arrays by a datasource of
row ranges (deepgen.data.ray_arrays; `read_numpy` would load a whole file in one task). Then two streaming
passes, each a `map_batches` over that dataset, so no process ever holds the rows:

    1. fit      every batch is checked (missing values, NaN, infinities: one line naming its file), its
                rows are given a split, and the batch reports a small aggregate (rows per split, the
                training rows' per-feature min and max, whether the scaled features are 0/1, what its
                labels look like); the aggregates are combined into the scaler
    2. write    every batch is split again (same answer), scaled, and written by `write_parquet`,
                partitioned by split: many Parquet files per split

Scaling is the in-memory prepare's: min-max fitted on train for tables and non-8-bit arrays, a fixed /255
for 8-bit images (an image table: /255 if any value is above 1, else /1); a row's shape is the source's
((D,), or (C, H, W) for images).

The split of a row depends only on its raw feature values and `data.seed` (a 64-bit hash of the values'
bits), not on the order or the blocks Ray Data reads them in: no global shuffle, the same split on every
run and cluster, and duplicate rows always land in the same split (no copy of a test row in train). Split
sizes are `val_fraction` / `test_fraction` of the rows in expectation, not exactly. A source with its own
test split (IDX t10k) keeps it as test; val is then `val_fraction` of the other rows, by the same hash.

Layout: DIR/train.parquet/ (a folder of part files; pyarrow and Ray Data read it like one file), the same
for val and test, and DIR/manifest.json written last, naming every file with its rows and bytes.
Everything is written into a hidden sibling folder and renamed into place (deepgen.files.write_folder).
`data.resize` is not done here: such a spec is refused (`ray_data`) or prepared in memory (`auto`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from deepgen.config import DataSpec, IdxSource, ImageTableSource, NpySource, TableSource
from deepgen.errors import DataError, DeepgenError, first_line

RAY_DATA_MIN_BYTES = 256 << 20  # engine auto: sources from this size on are prepared by Ray Data
STREAMED = (TableSource, NpySource, IdxSource, ImageTableSource)  # the sources Ray Data prepares
SPLIT_COLUMN = "split"
PATH_COLUMN = "path"  # Ray Data's include_paths column: which source file a row came from
FILE_BYTES = 64 << 20  # at most this much float32 feature data per part file
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def source_files(path: str | Path) -> list[Path]:
    """The .csv / .parquet files of a table source: the file itself, or every such file under a folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{path}: no such file")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".csv", ".parquet")
                   and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
    if not files:
        raise DataError(f"{path}: a folder without .csv or .parquet files")
    return files


def source_bytes(data: DataSpec) -> int:
    """Bytes of the source's files (0 for sources this engine does not stream, or that cannot be listed)."""
    try:
        return sum(f.stat().st_size for f in source_paths(data.source))
    except (DataError, OSError):
        return 0  # the reader names the problem


def source_paths(source) -> list[Path]:
    """The files a streamed source reads: a (image) table's files, a .npy and its labels, an IDX folder's four."""
    if isinstance(source, (TableSource, ImageTableSource)):
        return source_files(source.path)
    if isinstance(source, NpySource):
        return [Path(p).expanduser() for p in (source.path, source.labels) if p]
    if isinstance(source, IdxSource):
        from deepgen.data.ray_arrays import idx_files

        return idx_files(source)
    return []


def use_ray_data(data: DataSpec) -> bool:
    """Whether `data` is prepared by Ray Data: `engine: ray_data`, or `auto` and a table, .npy, IDX or image
    table source of at least RAY_DATA_MIN_BYTES. The in-memory path is seconds faster on small data (no Ray
    Data start-up)."""
    engine = getattr(data, "engine", "auto")
    if engine == "memory" or data.is_text:
        return False
    streamed = isinstance(data.source, STREAMED)
    if engine == "ray_data":
        if not streamed:
            raise DataError(f"data.engine: ray_data prepares table, npy, idx and image_table sources; the "
                            f"{data.source.kind} "
                            "source is prepared in memory (data.engine: memory or auto)")
        if data.resize:
            raise DataError("data.resize: the ray_data engine does not resize images; resize the source, or "
                            "prepare it in memory (data.engine: memory)")
        return True
    return streamed and not data.resize and source_bytes(data) >= RAY_DATA_MIN_BYTES


# --- the schema, checked file by file before Ray Data reads anything --------------------------------


def table_columns(source: TableSource, files: list[Path]) -> tuple[list[str], dict[str, pa.DataType]]:
    """(feature columns, Arrow type of every column read) from the files' schemas; a file that cannot be
    read, or whose schema differs from the first file's, is a DataError naming it."""
    from deepgen.data.sources import _is_numeric

    schemas = [(f, _file_schema(f)) for f in files]
    first, schema = schemas[0]
    names = schema.names
    if source.label_column and source.label_column not in names:
        raise DataError(f"{first}: no label column {source.label_column!r} (columns: {', '.join(names)})")
    features = source.feature_columns or [
        n for n in names if n not in (source.label_column, PATH_COLUMN) and _is_numeric(schema.field(n).type)]
    if not features:
        raise DataError(f"{first}: no numeric feature columns")
    wanted = features + ([source.label_column] if source.label_column else [])
    for f, s in schemas:
        for c in wanted:
            if c not in s.names:
                raise DataError(f"{f}: no column {c!r} (columns: {', '.join(s.names)}); every file of "
                                f"{source.path} needs the same columns")
            if c in features and not _is_numeric(s.field(c).type) and not pa.types.is_null(s.field(c).type):
                raise DataError(f"{f}: column {c!r} is {s.field(c).type}, expected numbers")
            if f.suffix == ".parquet" and s.field(c).type != schema.field(c).type:
                raise DataError(f"{f}: column {c!r} is {s.field(c).type} where {first.name} has "
                                f"{schema.field(c).type}; every file of {source.path} needs the same schema")
    return features, {c: schema.field(c).type for c in wanted}


def image_table_columns(source: ImageTableSource, files: list[Path]) -> list[str]:
    """The columns an image table's files must all have: a list of numbers per row, and the label."""
    from deepgen.data.sources import _is_numeric

    for f in files:
        if f.suffix != ".parquet":
            raise DataError(f"{f}: an image_table source reads .parquet files")
        schema = _file_schema(f)
        for c in (source.image_column, source.label_column):
            if c is not None and c not in schema.names:
                raise DataError(f"{f}: no column {c!r} (columns: {', '.join(schema.names)})")
        t = schema.field(source.image_column).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
                or not _is_numeric(t.value_type):
            raise DataError(f"{f}: column {source.image_column!r} is {t}, expected a list of numbers per row")
    return [c for c in (source.image_column, source.label_column) if c is not None]


def _file_schema(f: Path) -> pa.Schema:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if f.suffix == ".csv":
            with pcsv.open_csv(f) as reader:  # the header and the first block's inferred types
                return reader.schema
        return pq.read_schema(f)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for malformed files
        kind = "CSV" if f.suffix == ".csv" else "Parquet"
        raise DataError(f"{f}: cannot read {kind} file: {first_line(e)}") from None


# --- what the passes read: the rows of a source --------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """How the two passes read a batch of one source: where its features, labels and own test rows are."""

    where: str  # the source, for a message that names no single file
    shape: tuple[int, ...]  # one row: (D,) for tables, (C, H, W) for images
    columns: tuple[str, ...] | None  # a table's feature columns; None: one list column of a row's values
    label: str | None  # the label column, or None
    divisor: float | None  # a fixed scale to [0, 1] (8-bit images); None: min-max fitted on train
    own_test: bool = False  # batches carry `test`: the source's own test split (IDX t10k)
    label_file: str | None = None  # where labels come from when not the row's own file (a labels .npy)
    list_column: str = "features"  # the list column, where `columns` is None
    divisor_by_max: bool = False  # image tables: /255 if any value is above 1, else /1, as in memory

    @property
    def width(self) -> int:
        return math.prod(self.shape)


@dataclass
class RaySource:
    """A source planned for Ray Data: its rows, its files (checked, and hashed into the fingerprint), and a
    factory of its Ray Dataset."""

    rows: Rows
    files: list[Path]
    fingerprint_paths: list  # what `_hash_files` hashes, as the in-memory reader hashes it
    dataset: Callable


def plan_source(data: DataSpec) -> RaySource:
    """Check a source's files (schemas, headers) before Ray Data reads anything, and plan its read."""
    from deepgen.data import ray_arrays

    src = data.source
    if isinstance(src, ImageTableSource):
        files = source_files(src.path)
        columns = image_table_columns(src, files)
        rows = Rows(where=src.path, shape=tuple(src.image_shape), columns=None, label=src.label_column,
                    divisor=None, list_column=src.image_column, divisor_by_max=True)
        return RaySource(rows, files, [src.path], lambda: _read_parquet(files, columns))
    if isinstance(src, TableSource):
        files = source_files(src.path)
        features, types = table_columns(src, files)
        rows = Rows(where=src.path, shape=(len(features),), columns=tuple(features), label=src.label_column,
                    divisor=None)
        return RaySource(rows, files, [src.path], lambda: read_table_source(src, files, types))
    if isinstance(src, NpySource):
        parts, shape = ray_arrays.npy_parts(src)
        fingerprint_paths = [p for p in (src.path, src.labels) if p]
        label_file = src.labels
    else:
        parts, shape = ray_arrays.idx_parts(src)
        fingerprint_paths = ray_arrays.idx_files(src)
        label_file = None
    x = parts[0].features
    rows = Rows(where=src.path, shape=tuple(shape), columns=None, label="label" if parts[0].labels else None,
                divisor=255.0 if np.dtype(x.dtype) == np.uint8 else None, own_test=len(parts) > 1,
                label_file=label_file)
    files = [Path(f.path) for p in parts for f in (p.features, p.labels) if f is not None]
    return RaySource(rows, files, fingerprint_paths, lambda: ray_arrays.array_dataset(parts))


# --- per batch: check, split, scale ------------------------------------------------------------------


def batch_features(batch: pa.Table, rows: Rows) -> np.ndarray:
    """(N, D) float32 of a batch, refusing missing and non-finite values with the row's source file."""
    from deepgen.data.dataset import features_to_numpy

    if rows.columns is None:
        x = list_features(batch, rows) if rows.list_column != "features" else features_to_numpy(batch["features"])
    else:
        cols = []
        for name in rows.columns:
            col = batch.column(name)
            if col.null_count:
                where = _file_of(batch, np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
                raise DataError(f"{where}: column {name!r} has missing values; fix or drop those rows")
            cols.append(col.to_numpy().astype(np.float32))
        x = np.stack(cols, axis=1) if cols else np.zeros((batch.num_rows, 0), np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = _file_of(batch, bad.any(1))
        if rows.columns is not None:
            raise DataError(f"{where}: non-finite value ({x[row, col]}) in column {rows.columns[col]!r}; "
                            "clean or drop those rows")
        at = f"at row {batch.column('row')[int(row)].as_py()}, feature {col}" if "row" in batch.column_names \
            else f"in column {rows.list_column!r}, value {col} of a row"
        raise DataError(f"{where}: non-finite value ({x[row, col]}) {at}; clean or drop those rows")
    return x


def list_features(batch: pa.Table, rows: Rows) -> np.ndarray:
    """(N, D) float32 of a list column whose rows must each hold D numbers (an image table's pixels)."""
    import pyarrow.compute as pc

    name, width = rows.list_column, rows.width
    col = batch.column(name).combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    bad = np.asarray(col.is_null().to_numpy(zero_copy_only=False)) | (np.nan_to_num(lengths, nan=-1) != width)
    if bad.any():
        raise DataError(f"{_file_of(batch, bad)}: column {name!r} must hold {width} values in every row")
    values = col.flatten()
    if values.null_count:
        raise DataError(f"{_file_of(batch, np.ones(len(col), bool))}: column {name!r} has missing values "
                        "inside its lists; fix or drop those rows")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), width)


def batch_labels(batch: pa.Table, rows: Rows) -> np.ndarray | None:
    from deepgen.data.sources import check_labels

    column = rows.label
    if column is None:
        return None
    labels = batch.column(column)
    if labels.null_count:
        where = _file_of(batch, np.asarray(labels.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(f"{where}: column {column!r} has empty labels; fix or drop those rows")
    y = labels.to_numpy(zero_copy_only=False)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        check_labels(y, rows.label_file or f"{_file_of(batch, ~np.isfinite(y))}: column {column!r}")
    return y


def batch_test(batch: pa.Table, rows: Rows) -> np.ndarray | None:
    """(N,) bool: the rows of the source's own test split, or None where the source has none."""
    return batch.column("test").to_numpy(zero_copy_only=False).astype(bool) if rows.own_test else None


def _file_of(batch: pa.Table, bad_rows: np.ndarray) -> str:
    """The source file of the first bad row (Ray Data's `path` column)."""
    if PATH_COLUMN not in batch.column_names:
        return "data.source"
    return str(batch.column(PATH_COLUMN)[int(np.argmax(bad_rows))].as_py())


def row_hash(x: np.ndarray, seed: int) -> np.ndarray:
    """(N, D) float32 -> (N,) uint64: a hash of each row's bits and the seed (FNV-style multiply-xor per
    feature, then the splitmix64 finaliser), the same whichever block a row is read in."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)  # (N, D)
    h = np.full(len(x), np.uint64(seed) * _GOLDEN + np.uint64(0xCBF29CE484222325), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bits.shape[1]):
            h = (h ^ bits[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def assign_splits(x: np.ndarray, data: DataSpec, test: np.ndarray | None = None) -> np.ndarray:
    """(N,) split codes, 0 train, 1 val, 2 test: test below test_fraction of the hash range, val next. Where
    the source has its own test rows (`test`, IDX t10k), those are the test split and val is val_fraction of
    the others, as the in-memory prepare splits them."""
    u = (row_hash(x, data.seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    if test is not None:
        return np.where(test, 2, np.where(u < data.val_fraction, 1, 0))
    return np.where(u < data.test_fraction, 2, np.where(u < data.test_fraction + data.val_fraction, 1, 0))


SPLIT_NAMES = ("train", "val", "test")


class FitBatch:
    """Pass 1 over one batch -> one row of aggregates (the driver combines them in `fit_aggregates`)."""

    def __init__(self, data: DataSpec, rows: Rows):
        self.data, self.rows = data, rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        x = batch_features(batch, self.rows)
        y = batch_labels(batch, self.rows)
        split = assign_splits(x, self.data, batch_test(batch, self.rows))
        train = x[split == 0]
        d = x.shape[1]
        lo = train.min(0) if len(train) else np.full(d, np.inf, np.float32)
        hi = train.max(0) if len(train) else np.full(d, -np.inf, np.float32)
        two_valued = ((train == lo) | (train == hi)).all(0) if len(train) else np.ones(d, bool)
        # a fixed divisor maps the training values to {0, 1} exactly when they are 0 or the divisor
        zero_or_full = [bool(np.isin(train, (0.0, d)).all()) for d in _divisors(self.rows)]
        kind = "" if y is None else y.dtype.kind
        whole = y is None or kind != "f" or bool(np.all(y == np.round(y)) and np.abs(y).max(initial=0) <= 2**53)
        return pa.table({
            "rows": [np.bincount(split, minlength=3).tolist()],
            "lo": [lo.tolist()], "hi": [hi.tolist()], "two_valued": [two_valued.tolist()],
            "zero_or_full": [zero_or_full], "top": [float(x.max(initial=-np.inf))],
            "label_kind": [kind], "label_whole": [whole],
        })


class WriteBatch:
    """Pass 2 over one batch: split, scale, and the columns a prepared split has, plus `split`."""

    def __init__(self, data: DataSpec, rows: Rows, scaler, label_type: str | None):
        self.data, self.rows, self.scaler, self.label_type = data, rows, scaler, label_type

    def __call__(self, batch: pa.Table) -> pa.Table:
        from deepgen.data.dataset import fixed_size_list

        x = batch_features(batch, self.rows)
        split = assign_splits(x, self.data, batch_test(batch, self.rows))
        columns = {"features": fixed_size_list(self.scaler.apply(x))}
        if self.rows.label is not None:
            y = batch.column(self.rows.label).combine_chunks()
            columns["label"] = y.cast(pa.int64()) if self.label_type == "int" and not pa.types.is_integer(y.type) \
                else y
        columns[SPLIT_COLUMN] = pa.array(np.asarray(SPLIT_NAMES)[split])
        return pa.table(columns).replace_schema_metadata({b"deepgen.prepared": b"1"})


def _divisors(rows: Rows) -> tuple[float, ...]:
    """The fixed scales a source may have: its divisor, or both an image table's (decided by its maximum)."""
    return (rows.divisor,) if rows.divisor else (255.0, 1.0) if rows.divisor_by_max else ()


def fit_aggregates(aggregates: list[dict], data: DataSpec, rows: Rows) -> tuple[dict[str, int], np.ndarray,
                                                                                  np.ndarray, bool, str | None,
                                                                                  float | None]:
    """Combine the per-batch aggregates: (rows per split, min (D,), max (D,), binary features, label type,
    the fixed divisor or None for min-max)."""
    counts = np.sum([r["rows"] for r in aggregates], axis=0).astype(int) if aggregates else np.zeros(3, int)
    per_split = dict(zip(SPLIT_NAMES, counts.tolist(), strict=True))
    for name, n in per_split.items():
        if n == 0:
            raise DataError(f"data: the {name} split would be empty ({int(counts.sum())} rows in the source); "
                            "give more rows or change data.val_fraction / data.test_fraction")
    lo = np.stack([np.asarray(r["lo"], np.float32) for r in aggregates])  # (batches, D)
    hi = np.stack([np.asarray(r["hi"], np.float32) for r in aggregates])
    divisor = rows.divisor
    if rows.divisor_by_max:  # 8-bit pixels or already in [0, 1], over every row as the in-memory prepare says
        divisor = 255.0 if max(r["top"] for r in aggregates) > 1 else 1.0
    if divisor:
        binary = all(r["zero_or_full"][_divisors(rows).index(divisor)] for r in aggregates)
    else:  # min-max scaling maps a feature to {0, 1} exactly when it takes at most two values on train
        binary = all(all(r["two_valued"]) for r in aggregates) and all(
            len(np.unique(np.concatenate([lo[:, j], hi[:, j]])[np.isfinite(np.concatenate([lo[:, j], hi[:, j]]))]))
            <= 2 for j in range(lo.shape[1]))
    kinds = {r["label_kind"] for r in aggregates}
    if rows.label is None:
        label_type = None
    elif len(kinds) > 1 and not kinds <= {"i", "u", "f"}:
        raise DataError(f"{rows.where}: column {rows.label!r} holds labels of several types across its files")
    elif kinds <= {"i", "u"} or (kinds <= {"i", "u", "f"} and all(r["label_whole"] for r in aggregates)):
        label_type = "int"
    else:
        kind = "f" if "f" in kinds else kinds.pop()
        label_type = {"f": "float", "b": "bool", "O": "str", "U": "str", "S": "str"}.get(kind, kind)
    return per_split, lo.min(0), hi.max(0), binary, label_type, divisor


# --- the whole prepare ------------------------------------------------------------------------------


def read_table_source(source: TableSource, files: list[Path], types: dict[str, pa.DataType]):
    """A Ray Dataset of the wanted columns of every file, with each row's file in `path`."""
    import ray.data

    paths = [str(f) for f in files]
    if files[0].suffix == ".csv":
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(  # the same types in every file, whatever one file's values suggest
            column_types={c: (pa.float64() if pa.types.is_integer(t) or pa.types.is_floating(t) else t)
                          for c, t in types.items()}, include_columns=list(types))
        return ray.data.read_csv(paths, include_paths=True, convert_options=convert)
    return _read_parquet(files, list(types))


def _read_parquet(files: list[Path], columns: list[str]):
    import ray.data

    return ray.data.read_parquet([str(f) for f in files], include_paths=True).select_columns([*columns, PATH_COLUMN])


def prepare_with_ray_data(data: DataSpec, out_dir: str | Path, log=print):
    """The Ray Data prepare of a streamed source (STREAMED); returns (manifest, wrote) like `prepare_dataset`."""
    from deepgen.data.dataset import MANIFEST, ROW_GROUP_BYTES, publish, splits_present
    from deepgen.data.manifest import Manifest, Scaler, dataset_fingerprint, read_manifest
    from deepgen.data.sources import _hash_files

    out_dir = Path(out_dir)
    plan = plan_source(data)  # a bad file, schema or header: one line, before anything is read or written
    rows_spec, where = plan.rows, plan.rows.where
    source_fingerprint = _hash_files(plan.fingerprint_paths)
    fingerprint = dataset_fingerprint(data, source_fingerprint, engine="ray_data")
    current = read_manifest(out_dir)
    if current is not None and current.fingerprint == fingerprint and splits_present(out_dir, current.rows):
        log(f"prepare: {out_dir} is up to date (fingerprint {fingerprint[:12]}), nothing to do")
        return current, False
    _quiet()
    ds = plan.dataset()
    stats = _run(lambda: ds.map_batches(FitBatch(data, rows_spec), batch_format="pyarrow", batch_size=None)
                 .take_all(), where)
    rows, lo, hi, binary, label_type, divisor = fit_aggregates(stats, data, rows_spec)
    rows_spec = dataclasses.replace(rows_spec, divisor=divisor, divisor_by_max=False)
    scaler = Scaler(divisor=divisor) if divisor else Scaler(minimum=lo.tolist(), maximum=hi.tolist())
    log(f"prepare: Ray Data read {len(plan.files)} files, {sum(rows.values())} rows; writing the splits")

    manifest_box: list[Manifest] = []

    def fill(folder: Path) -> None:
        import pyarrow.parquet as pq

        parts = folder / ".parts"
        _run(lambda: ds.map_batches(WriteBatch(data, rows_spec, scaler, label_type), batch_format="pyarrow",
                                    batch_size=None).write_parquet(
            str(parts), partition_cols=[SPLIT_COLUMN], max_rows_per_file=rows_per(FILE_BYTES, rows_spec.width),
            row_group_size=rows_per(ROW_GROUP_BYTES, rows_spec.width)),
             where)
        for name in SPLIT_NAMES:
            os.replace(parts / f"{SPLIT_COLUMN}={name}", folder / f"{name}.parquet")
        shutil.rmtree(parts)
        entries = {name: _file_entries(folder / f"{name}.parquet") for name in SPLIT_NAMES}
        written = {k: sum(e["rows"] for e in v) for k, v in entries.items()}
        if written != rows:  # the two passes must agree; else the source changed while it was read
            raise DataError(f"{where}: the source changed while it was prepared ({rows} then {written} rows)")
        schema = pq.read_schema(folder / "train.parquet" / entries["train"][0]["name"])
        manifest = Manifest(fingerprint=fingerprint, source_fingerprint=source_fingerprint,
                            shape=list(rows_spec.shape), rows=written, label_type=label_type,
                            feature_names=None if rows_spec.columns is None else list(rows_spec.columns),
                            scaler=scaler, binary_features=binary, files=entries,
                            arrow_schema={f.name: str(f.type) for f in schema if f.name != SPLIT_COLUMN})
        (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2))  # last: the dataset is complete
        manifest_box.append(manifest)

    publish(out_dir, fill, fingerprint)
    manifest = manifest_box[0] if manifest_box else read_manifest(out_dir)
    log(f"prepare: wrote {out_dir} ({', '.join(f'{k} {v}' for k, v in manifest.rows.items())} rows, "
        f"{sum(len(v) for v in manifest.files.values())} files)")
    return manifest, True


def rows_per(nbytes: int, width: int) -> int:
    """Rows of `width` float32 features that fill `nbytes` (at least 1,024)."""
    return max(1024, nbytes // (4 * max(width, 1)))


def _file_entries(split_dir: Path) -> list[dict]:
    """Name, rows and bytes of every part file of a written split, from the Parquet footers alone."""
    import pyarrow.parquet as pq

    return [{"name": f.name, "rows": pq.read_metadata(f).num_rows, "bytes": f.stat().st_size}
            for f in sorted(split_dir.glob("*.parquet"))]


def _quiet() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failed batch is our one line, not a traceback


def _run(step, where: str):
    """Run a Ray Data step; a failure becomes one DataError: ours from a batch, or the reader's, with its file."""
    try:
        return step()
    except Exception as e:  # noqa: BLE001 - Ray wraps a batch's error in RayTaskError(UserCodeException)
        if isinstance(e, DeepgenError) and not hasattr(e, "cause"):
            raise  # ours, raised in this process
        raise ray_data_error(e, where) from None


def ray_data_error(e: BaseException, where: str) -> DataError:
    seen: set[int] = set()
    stack = [e]
    while stack:  # a DataError raised in a batch, under Ray's wrappers
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        # a read task's DataError comes as RayTaskError(DataError), an instance of both whose text is the
        # whole traceback: the original is its cause
        if isinstance(err, DataError) and not hasattr(err, "cause"):
            return DataError(first_line(err))  # Ray Data may append lines of its own (its retry policy)
        stack += [getattr(err, "cause", None), err.__cause__, err.__context__]
    text = str(e)
    for line in text.splitlines():
        if "DataError:" in line:
            return DataError(line.split("DataError:", 1)[1].strip())
    for line in text.splitlines():  # a reader's own error names its file: "Failed to read CSV file: F."
        if "Failed to read" in line or "Invalid" in line or "Error" in line:
            return DataError(f"{where}: {line.strip()[:300]}")
    return DataError(f"{where}: {first_line(e)[:300]}")
