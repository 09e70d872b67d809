"""Scoring rows larger than memory: Ray Data `map_batches` with the model loaded once per actor.

`deepgen score`: a folder of Parquet / CSV files, or one file of at least SHARDED_MIN_BYTES, is read by Ray
Data's readers; an actor pool (each actor loads the exported model once, from bytes the driver put in Ray's
object store, so actors on any node can load it) turns each batch of raw rows into `score`, `is_anomaly`
(and `label`, `path`: the row's input file); `write_parquet` writes many files into a hidden folder that is
renamed onto --output at the end. The driver sees the model's bytes going out and two numbers coming back (rows,
flagged), never the rows.

Evaluation and the gate (`map_split`): a prepared split written as part files (the Ray Data prepare) is
mapped by actors that each hold the model once; what comes back per batch is the small result the caller's
function makes of it (scores and labels, a sum), never the features. Other splits are mapped chunk by chunk
in this process, by the same function.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from deepgen.errors import DataError

SHARDED_MIN_BYTES = 256 << 20  # a single input file from this size on is scored by Ray Data
BATCH_ROWS = 4096


def is_large_input(path: str | Path) -> bool:
    """Whether `path` is scored by Ray Data: a folder of Parquet / CSV files, or a big .parquet / .csv."""
    p = Path(path)
    if p.is_dir():  # a folder of table files (a folder without any is the in-memory reader's to refuse)
        return any(f.suffix in (".parquet", ".csv") for f in p.rglob("*"))
    return p.suffix in (".parquet", ".csv") and p.is_file() and p.stat().st_size >= SHARDED_MIN_BYTES


def model_blob(model_dir: Path) -> dict[str, bytes]:
    """An exported model folder as {relative path: bytes} (a few MB), for Ray's object store."""
    return {str(f.relative_to(model_dir)): f.read_bytes() for f in sorted(model_dir.rglob("*")) if f.is_file()}


class ScoreBatch:
    """An actor of the pool: loads the model once, then scores batches of raw rows."""

    def __init__(self, blob: dict[str, bytes], input_scaler: dict | None = None):
        from deepgen.data.manifest import Scaler
        from deepgen.serving import load_exported

        folder = Path(tempfile.mkdtemp(prefix="deepgen-score-model-"))
        try:
            for name, data in blob.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
            self.scorer = load_exported(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.input_scaler = Scaler.model_validate(input_scaler) if input_scaler else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from deepgen import anomaly
        from deepgen.data.dataset import features_to_numpy
        from deepgen.export import table_rows

        where = str(batch.column("path")[0].as_py()) if "path" in batch.column_names else "input"
        meta = self.scorer.meta
        if "features" in batch.column_names:  # prepared rows: scaled for their dataset, mapped to the model's
            x = features_to_numpy(batch.column("features"))
            x = meta.scaler.rescale(x, scaled_by=self.input_scaler) if self.input_scaler else meta.scaler.apply(x)
        else:
            x = table_rows(batch, meta, where)
        if x.shape[1] != meta.num_features:
            raise DataError(f"{where}: rows have {x.shape[1]} features, the model expects {meta.num_features}")
        bad = ~np.isfinite(x).all(1)
        if bad.any():
            where = str(batch.column("path")[int(np.argmax(bad))].as_py()) if "path" in batch.column_names else where
            raise DataError(f"{where}: rows hold NaN or infinite values; clean or drop them")
        scores = self.scorer.score(x)
        columns = {"score": pa.array(scores), "is_anomaly": pa.array(anomaly.flag(scores, self.scorer.threshold))}
        if "label" in batch.column_names:
            columns["label"] = batch.column("label")
        if "path" in batch.column_names:
            columns["path"] = batch.column("path")
        return pa.table(columns)


def pool_size(wanted: int) -> int:
    """Actors for a map_batches pool: `wanted`, but never every free CPU of the cluster. One stays for Ray
    Data's read tasks: a pool holding every CPU waits on them forever (on a 2-CPU Ray, two actors hang)."""
    import ray

    return max(1, min(wanted, int(ray.available_resources().get("CPU", 2)) - 1))


@contextmanager
def _worker_logs_held_back():
    """Keep the lines Ray forwards from its workers (actor start-up, core-worker notices such as "Mismatched
    ActorID" from an earlier job's actor) off this driver's stderr while scoring, so that an error is the one
    line deepgen prints; the actors' failures still arrive as exceptions. Ray 2.x's log dispatcher: a no-op on
    a Ray without it."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        yield
        return
    with dispatcher._lock:
        held, dispatcher.handlers = dispatcher.handlers, []
    try:
        yield
    finally:
        with dispatcher._lock:
            dispatcher.handlers = held + dispatcher.handlers


def score_with_ray_data(model_dir: Path, input_path: str | Path, output: Path, actors: int = 2) -> dict[str, int]:
    """Score every row of `input_path` into the Parquet folder `output` (published whole, or not at all);
    returns {"rows": N, "flagged": K, "files": F}."""
    import warnings

    import pyarrow.parquet as pq
    import ray
    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    from deepgen.data.manifest import read_manifest
    from deepgen.data.prepare_ray import _quiet, _run, source_files
    from deepgen.files import writing

    files = source_files(input_path)
    _quiet()
    paths = [str(f) for f in files]
    ds = ray.data.read_csv(paths, include_paths=True) if files[0].suffix == ".csv" \
        else ray.data.read_parquet(paths, include_paths=True)
    manifest = read_manifest(Path(input_path).parent)  # a prepared split folder: DIR/test.parquet/
    scaler = manifest.scaler.model_dump() if manifest is not None and Path(input_path).is_dir() \
        and Path(input_path).suffix == ".parquet" else None
    blob = model_blob(model_dir)  # a constructor argument: Ray puts it in the object store once
    with warnings.catch_warnings(), _worker_logs_held_back(), writing(output) as tmp:
        # stderr stays deepgen's: Ray 2.60 names no parameter for a scheduling strategy (the remote arg works),
        # and Ray Data warns when a small input has fewer blocks than the pool has actors
        warnings.simplefilter("ignore", RayDeprecationWarning)
        warnings.filterwarnings("ignore", module=r"ray\.data")
        scored = ds.map_batches(ScoreBatch, fn_constructor_args=(blob, scaler), batch_size=BATCH_ROWS,
                                batch_format="pyarrow", concurrency=pool_size(actors),
                                scheduling_strategy="SPREAD")  # a fixed pool, one actor per node where it can
        _run(lambda: scored.write_parquet(str(tmp)), str(input_path))
        written = sorted(Path(tmp).glob("*.parquet"))
        if not written:
            raise DataError(f"{input_path}: no rows; give at least one row")
        rows = sum(pq.read_metadata(f).num_rows for f in written)
        flagged = int(_run(lambda: ray.data.read_parquet(str(tmp)).select_columns(["is_anomaly"]).sum("is_anomaly"),
                           str(input_path)) or 0)
    return {"rows": rows, "flagged": flagged, "files": len(written)}


# --- prepared splits: evaluation, the scorer's fit, the gate's rescoring ------------------------------


class _MapBatch:
    """An actor of map_split's pool: holds `fn` (and so its model) once; each batch of a split's rows comes
    back as one row holding the pickled `fn(features, labels)`."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, batch: pa.Table) -> pa.Table:
        from deepgen.data.dataset import features_to_numpy

        labels = batch.column("label").to_numpy(zero_copy_only=False) if "label" in batch.column_names else None
        out = self.fn(features_to_numpy(batch.column("features")), labels)
        return pa.table({"out": pa.array([pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)], pa.binary())})


def maps_on_ray_data(data_dir: str | Path, split: str) -> bool:
    """Whether map_split runs on Ray Data actors: the split is a folder of part files (the Ray Data prepare
    wrote it: data that may not fit one process) and this process is connected to Ray."""
    from deepgen.data.dataset import split_path

    if not Path(split_path(data_dir, split)).is_dir():
        return False
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def map_split(fn: Callable[[np.ndarray, np.ndarray | None], object], data_dir: str | Path, split: str,
              actors: int | None = None) -> Iterator:
    """`fn(features (n, D) float32, labels (n,) or None)` of every batch of a prepared split, one result per
    batch, in no promised order. On Ray Data (`maps_on_ray_data`) `fn` is pickled once into the object
    store and held by each of `actors` actors (default: one per batch of the split, at most 8; never every
    free CPU: pool_size), spread over the nodes; this process only receives the results.
    Otherwise the split is read here chunk by chunk (deepgen.data.dataset.iter_split). `fn` must be
    picklable (a class, not a lambda)."""
    from deepgen.data.dataset import iter_split, split_files, split_path
    from deepgen.data.manifest import read_manifest

    if not maps_on_ray_data(data_dir, split):
        for x, y in iter_split(data_dir, split):
            yield fn(x, y)
        return
    import warnings

    import ray
    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    from deepgen.data.prepare_ray import _quiet, _run

    files = split_files(data_dir, split)
    if not files:
        raise DataError(f"{split_path(data_dir, split)}: missing; run `deepgen prepare` first")
    if actors is None:
        manifest = read_manifest(data_dir)  # the rows per split, without opening a part file here
        batches = -(-manifest.rows.get(split, 0) // BATCH_ROWS) if manifest is not None else len(files)
        actors = min(max(1, batches), 8)
    _quiet()
    where = split_path(data_dir, split)
    with warnings.catch_warnings(), _worker_logs_held_back():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        warnings.filterwarnings("ignore", module=r"ray\.data")
        ds = ray.data.read_parquet([str(f) for f in files])  # the prepared columns: features (, label)
        mapped = ds.map_batches(_MapBatch, fn_constructor_args=(fn,), batch_size=BATCH_ROWS,
                                batch_format="pyarrow", concurrency=pool_size(actors), scheduling_strategy="SPREAD",
                                max_restarts=0)  # no restart from arguments that may be gone (and no warning)
        tables = _run(lambda: ray.get(mapped.to_arrow_refs()), where)  # one small result per batch
    for table in tables:
        for blob in table.column("out").to_pylist():
            yield pickle.loads(blob)


class SplitScores:
    """fn for map_split: (scores (n,) float64, labels, the batch's first rows (<= 8, D)) by `score(x)`."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray]):
        self.score = score

    def __call__(self, x: np.ndarray, y: np.ndarray | None):
        return np.asarray(self.score(x), np.float64), y, x[:8].copy()


def score_split(score: Callable[[np.ndarray], np.ndarray], data_dir: str | Path,
                split: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(scores (N,), labels (N,) or None, a few of its rows (<= 8, D), for pictures) of a prepared split
    scored by `score` (picklable) through map_split: what the caller holds is the score arrays, never the
    split's features. Rows pair with their labels; their order is the split's only in this process."""
    scores, labels, head = [], [], None
    for s, y, x in map_split(SplitScores(score), data_dir, split):
        scores.append(s)
        if y is not None:
            labels.append(y)
        if head is None or (len(head) < 8 and len(x) > len(head)):
            head = x
    if not scores:
        raise DataError(f"{data_dir}: the {split} split has no rows")
    return np.concatenate(scores), (np.concatenate(labels) if labels else None), head
