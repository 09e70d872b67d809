"""Reading prepared splits: as numpy (evaluation, the plain loop) and which rows count as normal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepgen.config import AnomalySpec
from deepgen.errors import DataError
from deepgen.files import WriteRace, write_folder

MANIFEST = "manifest.json"  # beside the split files; written last


def split_path(data_dir: str | Path, split: str) -> str:
    """DIR/SPLIT.parquet: one file (the in-memory prepare, text) or a folder of part files (the Ray Data
    prepare, deepgen.data.prepare_ray); pyarrow and Ray Data read either as one table."""
    return str(Path(data_dir) / f"{split}.parquet")


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The Parquet files of one prepared split, in order (one for a single-file split)."""
    path = Path(split_path(data_dir, split))
    if path.is_dir():
        return sorted(f for f in path.glob("*.parquet") if not f.name.startswith((".", "_")))
    return [path] if path.is_file() else []


def split_bytes(data_dir: str | Path, split: str) -> int:
    return sum(f.stat().st_size for f in split_files(data_dir, split))


def split_schema(data_dir: str | Path, split: str) -> pa.Schema:
    files = split_files(data_dir, split)
    if not files:
        raise DataError(f"{split_path(data_dir, split)}: missing; run `deepgen prepare` first")
    return pq.read_schema(files[0])


def split_rows(data_dir: str | Path, split: str) -> int:
    """Rows of a split from its files' Parquet footers (no row is read)."""
    return sum(pq.read_metadata(f).num_rows for f in split_files(data_dir, split))


def features_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column -> (N, D) float32 without a per-row copy."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(features (N, D) float32, labels (N,) or None) of one prepared split."""
    path = split_path(data_dir, split)
    if not split_files(data_dir, split):
        raise DataError(f"{path}: missing; run `deepgen prepare` first")
    table = pq.read_table(path)
    labels = table.column("label").to_numpy(zero_copy_only=False) if "label" in table.column_names else None
    return features_to_numpy(table.column("features")), labels


def split_labels(data_dir: str | Path, split: str) -> np.ndarray | None:
    """The label column of a split alone (None if it has none): one value per row, no features read."""
    if "label" not in split_schema(data_dir, split).names:
        return None
    return pq.read_table(split_path(data_dir, split), columns=["label"]).column("label").to_numpy()


def iter_split(data_dir: str | Path, split: str, chunk_rows: int = 65_536):
    """(features (n, D) float32, labels (n,) or None) chunks of a prepared split, file by file: what a caller
    keeps per row (a score) grows with the split, the rows themselves do not."""
    files = split_files(data_dir, split)
    if not files:
        raise DataError(f"{split_path(data_dir, split)}: missing; run `deepgen prepare` first")
    for f in files:
        pf = pq.ParquetFile(f)
        columns = [c for c in ("features", "label") if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            labels = batch.column("label").to_numpy(zero_copy_only=False) if "label" in batch.schema.names else None
            yield features_to_numpy(batch.column("features")), labels


def take_rows(data_dir: str | Path, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(features (n, D) float32, labels (n,) or None) of the split's rows at positions `rows`, in that order
    (positions in iter_split's order, which is load_split's), read chunk by chunk: memory is one chunk and
    the rows taken, never the split (a GAN's evaluation samples a thousand rows of splits of any size)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    width = split_schema(data_dir, split).field("features").type.list_size
    features, labels, start = np.empty((len(rows), width), np.float32), None, 0
    for x, y in iter_split(data_dir, split):
        lo, hi = np.searchsorted(wanted, [start, start + len(x)])
        if y is not None and labels is None:
            labels = np.empty(len(rows), y.dtype)
        features[order[lo:hi]] = x[wanted[lo:hi] - start]
        if y is not None:
            labels[order[lo:hi]] = y[wanted[lo:hi] - start]
        start += len(x)
    if len(rows) and (wanted[0] < 0 or wanted[-1] >= start):
        raise IndexError(f"{split_path(data_dir, split)}: rows {wanted[0]}..{wanted[-1]} asked of {start}")
    return features, labels


def sample_rows(data_dir: str | Path, split: str, count: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` random rows of a split (all of them, shuffled, if it has fewer): the positions
    rng.permutation(rows)[:count], read by take_rows."""
    return take_rows(data_dir, split, rng.permutation(split_rows(data_dir, split))[:count])


def normal_mask(labels: pa.Array | np.ndarray | None, anomaly: AnomalySpec, n: int) -> np.ndarray:
    """True for rows that are normal under the spec; every row when the data has no labels."""
    if labels is None or (anomaly.normal_labels is None and anomaly.anomalous_labels is None):
        return np.ones(n, dtype=bool)
    labels = pa.array(labels) if not isinstance(labels, (pa.Array, pa.ChunkedArray)) else labels
    if anomaly.normal_labels is not None:
        return pc.is_in(labels, value_set=_typed(anomaly.normal_labels, labels.type)).to_numpy(zero_copy_only=False)
    return ~pc.is_in(labels, value_set=_typed(anomaly.anomalous_labels, labels.type)).to_numpy(zero_copy_only=False)


def normal_train_mask(labels: pa.Array | np.ndarray | None, anomaly: AnomalySpec, n: int) -> np.ndarray:
    """normal_mask for the train split, refusing a spec under which no training row is normal."""
    mask = normal_mask(labels, anomaly, n)
    if n and not mask.any():
        field = "anomaly.normal_labels" if anomaly.normal_labels is not None else "anomaly.anomalous_labels"
        present = sorted(pc.unique(pa.array(labels) if isinstance(labels, np.ndarray) else labels).to_pylist())
        raise DataError(f"{field}: no training row is normal under it (the train split's labels are {present}); "
                        "name labels the data has as normal")
    return mask


def check_normal_rows(data_dir: str | Path, anomaly: AnomalySpec) -> None:
    """Raise DataError, before any training starts, if the anomaly spec leaves no normal training rows."""
    if anomaly.normal_labels is None and anomaly.anomalous_labels is None:
        return
    path = split_path(data_dir, "train")
    if "label" in split_schema(data_dir, "train").names:
        labels = pq.read_table(path, columns=["label"]).column("label")
        normal_train_mask(labels, anomaly, len(labels))


def normal_row_count(data_dir: str | Path, anomaly: AnomalySpec) -> int:
    """How many training rows the model learns from (the normal ones), read from the label column alone."""
    path = split_path(data_dir, "train")
    if "label" not in split_schema(data_dir, "train").names:
        return split_rows(data_dir, "train")
    labels = pq.read_table(path, columns=["label"]).column("label")
    return int(normal_mask(labels, anomaly, len(labels)).sum())


def _typed(values: list, arrow_type: pa.DataType) -> pa.Array:
    try:
        return pa.array(values).cast(arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"anomaly labels {values} do not match the data's label type ({arrow_type})") from None


# --- writing a prepared dataset (deepgen.data.prepare, deepgen.data.text) --------------------------


def splits_present(out_dir: Path, rows: dict[str, int]) -> bool:
    """Whether every split file a manifest lists is there (one deleted by hand means: prepare again)."""
    return all(split_files(out_dir, name) for name in rows)


def write_atomically(out_dir: Path, tables: dict[str, pa.Table], manifest, extra=None) -> None:
    """Write into a hidden sibling folder, then swap it into place (deepgen.files.write_folder); the manifest is
    written last. `extra(folder)` writes any further files of the dataset (e.g. a text dataset's tokenizer)."""

    def fill(folder: Path) -> None:
        for name, table in tables.items():
            pq.write_table(table, folder / f"{name}.parquet", row_group_size=row_group_rows(table))
        if extra is not None:
            extra(folder)
        (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2))

    publish(out_dir, fill, manifest.fingerprint)


ROW_GROUP_BYTES = 4 << 20  # per row group: the unit streaming training (deepgen.train.stream) reorders per epoch


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group for about ROW_GROUP_BYTES of data (at least 1,024)."""
    per_row = table.nbytes / max(table.num_rows, 1)
    return max(1024, int(ROW_GROUP_BYTES / max(per_row, 1)))


def publish(out_dir: Path, fill, fingerprint: str) -> None:
    """`fill(folder)` writes a whole dataset, manifest last, into a hidden sibling folder that then replaces
    `out_dir` (deepgen.files.write_folder): readers see the old dataset or the new one, never half of one."""
    try:  # another process preparing the same folder may swap its copy in first: fine if it holds the same data
        write_folder(out_dir, fill, same=lambda: _written_fingerprint(out_dir) == fingerprint)
    except WriteRace:
        raise DataError(f"{out_dir}: another process wrote this dataset at the same time; "
                        "run again once it is done") from None


def read_manifest_as(cls, directory: str | Path):
    """The dataset's manifest as the pydantic class `cls` (an image/table or a text manifest), or None when
    there is none, or one that is older, damaged or of the other kind: prepare again."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return cls.model_validate_json(path.read_text())
    except ValueError:
        return None


def _written_fingerprint(directory: Path) -> str | None:
    """The fingerprint in a dataset's manifest, read from the JSON so image and text manifests both count."""
    try:
        return json.loads((directory / MANIFEST).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def fixed_size_list(x: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) rows -> a fixed-size-list<float32> column, as a prepared split stores `features` and `target`."""
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel(), pa.float32()), x.shape[1])
