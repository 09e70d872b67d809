"""Array sources (.npy, IDX) as a Ray Data datasource: ranges of rows read straight from the files, so no
process holds a whole array (deepgen.data.prepare_ray streams them like a table).

`ray.data.read_numpy` loads a whole .npy file into one task, and knows no IDX; here the driver reads only the
headers (checked before any read: a bad magic, a truncated file, labels that do not match are one line naming
the file), and each read task memory-maps its range of rows (a gzipped file is decompressed as one stream)
and yields blocks of a few MiB: `features` (a fixed-size list of the raw values), `label` when the source
has labels, `path` and `row` (where each row comes from) and `test` (the source's own test split, IDX t10k).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from deepgen.config import IdxSource, NpySource
from deepgen.errors import DataError, first_line

BLOCK_VALUES = 4 << 20  # raw values per block a read task yields (16 MiB as float32)
MIN_TASK_ROWS = 256  # fewer rows than this are not worth a read task of their own



@dataclass(frozen=True)
class ArrayFile:
    """Where an array's rows lie in its file: the data offset, dtype and shape from the header alone."""

    path: str
    offset: int
    dtype: str  # numpy dtype string, byte order included ('>i4', '<f4', '|u1')
    shape: tuple[int, ...]  # (N, ...) as stored
    fortran: bool = False
    gz: bool = False

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return math.prod(self.shape[1:])

    def memmap(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset, shape=self.shape,
                         order="F" if self.fortran else "C")


@dataclass(frozen=True)
class ArrayPart:
    """One array of rows and its labels (same length), and whether they are the source's own test split."""

    features: ArrayFile
    labels: ArrayFile | None
    test: bool = False
    label_dtype: str | None = None  # labels cast to this (IDX: int64, as the in-memory reader gives them)


# --- headers, read and checked in the driver --------------------------------------------------------


def npy_header(path: str | Path, kinds: str = "iuf") -> ArrayFile:
    """The header of a .npy file, checked against the file's size (a truncated file is refused here)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    fmt = np.lib.format
    try:
        with open(p, "rb") as f:
            if f.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
                raise DataError(f"{path}: not a .npy file (no NUMPY header); write arrays with numpy.save")
            f.seek(0)
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (ValueError, EOFError, OSError) as e:  # a damaged header, or a version numpy cannot read
        raise DataError(f"{path}: cannot read the .npy header ({first_line(e)})") from None
    if dtype.hasobject or dtype.kind not in kinds:
        raise DataError(f"{path}: expected a {'numeric ' if kinds == 'iuf' else ''}array, got {dtype}")
    need = offset + math.prod(shape) * dtype.itemsize
    if p.stat().st_size < need:
        raise DataError(f"{path}: truncated .npy file ({p.stat().st_size} bytes, its header {shape} needs {need})")
    return ArrayFile(str(p), offset, dtype.str, tuple(shape), fortran=bool(fortran))


def idx_header(path: Path) -> ArrayFile:
    """The header of an IDX file (`sources.read_idx_header`), checked against its size where the file is not
    gzipped (a gzipped one is checked as its rows are read)."""
    from deepgen.data.sources import read_idx_header

    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            dtype, dims, offset = read_idx_header(f, path)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file: {first_line(e)}") from None
    if not gz and path.stat().st_size - offset != math.prod(dims) * dtype.itemsize:
        raise DataError(f"{path}: IDX header says {dims} but the file holds {path.stat().st_size - offset} "
                        "data bytes")
    return ArrayFile(str(path), offset, dtype.str, dims, gz=gz)


def npy_parts(source: NpySource) -> tuple[list[ArrayPart], tuple[int, ...]]:
    """([the features and labels], one row's shape) of a .npy source, as `read_npy` shapes it."""
    x = npy_header(source.path)
    if len(x.shape) not in (2, 3, 4):
        raise DataError(f"{source.path}: expected a numeric array of shape (N, D), (N, H, W) or (N, C, H, W), "
                        f"got {np.dtype(x.dtype)} {x.shape}")
    y = None
    if source.labels:
        y = npy_header(source.labels, kinds="iufbUS")  # labels may be strings or booleans
        if y.shape != (x.rows,):
            raise DataError(f"{source.labels}: expected {x.rows} labels, got shape {y.shape}")
    shape = (1, *x.shape[1:]) if len(x.shape) == 3 else x.shape[1:]
    return [ArrayPart(x, y)], shape


def idx_parts(source: IdxSource) -> tuple[list[ArrayPart], tuple[int, ...]]:
    """([train images and labels, t10k images and labels (the test split)], (1, H, W)) of an IDX folder."""
    from deepgen.data.sources import IDX_NAMES, _find_idx

    directory = Path(source.path).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: no such IDX directory (data.source.path)")
    x, y, xt, yt = (idx_header(_find_idx(directory, name)) for name in IDX_NAMES)
    for images, labels, name in ((x, y, "train"), (xt, yt, "t10k")):
        if len(images.shape) != 3 or len(labels.shape) != 1 or images.rows != labels.rows:
            raise DataError(f"{directory}: {name} images {images.shape} and labels {labels.shape} do not match")
    if xt.shape[1:] != x.shape[1:] or xt.dtype != x.dtype:
        raise DataError(f"{xt.path}: images of {xt.shape[1:]} {np.dtype(xt.dtype)} where the train images are "
                        f"{x.shape[1:]} {np.dtype(x.dtype)}")
    return [ArrayPart(x, y, label_dtype="int64"), ArrayPart(xt, yt, test=True, label_dtype="int64")], \
        (1, *x.shape[1:])


def idx_files(source: IdxSource) -> list[Path]:
    """The four files of an IDX folder, in the order the in-memory reader hashes them."""
    from deepgen.data.sources import IDX_NAMES, _find_idx

    return [_find_idx(Path(source.path).expanduser(), name) for name in IDX_NAMES]


# --- the datasource ----------------------------------------------------------------------------------


def _datasource_class():
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ArrayDatasource(Datasource):
        """Rows of ArrayParts: every part cut into ranges of rows, one read task a range."""

        def __init__(self, parts: list[ArrayPart]):
            super().__init__()
            self.parts = parts

        def estimate_inmemory_data_size(self) -> int:
            return sum(p.features.rows * p.features.width * 4 for p in self.parts)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            tasks = []
            for part in self.parts:
                n = part.features.rows
                # a gzipped file is one stream: one task reads it (a seek would decompress from the start)
                k = 1 if part.features.gz or (part.labels and part.labels.gz) \
                    else max(1, min(parallelism, n // MIN_TASK_ROWS))
                bounds = np.linspace(0, n, k + 1).astype(int)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                    if hi > lo:
                        meta = BlockMetadata(num_rows=int(hi - lo), size_bytes=int(hi - lo) * part.features.width * 4,
                                             exec_stats=None, input_files=[part.features.path])
                        tasks.append(ReadTask(lambda p=part, a=int(lo), b=int(hi): read_rows(p, a, b), meta,
                                              per_task_row_limit=per_task_row_limit))
            return tasks

    return ArrayDatasource


def array_dataset(parts: list[ArrayPart]):
    """A Ray Dataset of every row of `parts` (columns: features, label, path, row, test)."""
    import ray.data

    return ray.data.read_datasource(_datasource_class()(parts))


def read_rows(part: ArrayPart, start: int, stop: int):
    """Blocks of rows [start, stop) of one part (a read task's work)."""
    step = max(1, BLOCK_VALUES // max(part.features.width, 1))
    x_rows, y_rows = _row_reader(part.features, start), (None if part.labels is None
                                                          else _row_reader(part.labels, start))
    for a in range(start, stop, step):
        b = min(stop, a + step)
        x = x_rows(a, b)
        flat = x.reshape(b - a, -1)
        columns = {"features": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])}
        if y_rows is not None:
            y = y_rows(a, b)
            columns["label"] = pa.array(y if part.label_dtype is None else y.astype(part.label_dtype))
        columns.update(path=pa.array([part.features.path] * (b - a)), row=pa.array(np.arange(a, b)),
                       test=pa.array(np.full(b - a, part.test)))
        yield pa.table(columns)
    for reader in (x_rows, y_rows):
        if reader is not None and hasattr(reader, "close"):
            reader.close(stop)


def _row_reader(f: ArrayFile, start: int):
    """rows(a, b) -> native-order numpy rows [a, b) of `f`, read in increasing order from `start`."""
    native = np.dtype(f.dtype).newbyteorder("=")
    if not f.gz:
        mm = f.memmap()
        return lambda a, b: np.ascontiguousarray(mm[a:b]).astype(native, copy=False)
    return _GzipRows(f, start, native)


class _GzipRows:
    """Rows of a gzipped file, decompressed in order; a file that ends early or holds more is a DataError."""

    def __init__(self, f: ArrayFile, start: int, native: np.dtype):
        self.f, self.native = f, native
        self.row_bytes = f.width * np.dtype(f.dtype).itemsize
        self.stream = gzip.open(f.path, "rb")
        self._guard(self.stream.seek, f.offset + start * self.row_bytes)

    def _guard(self, step, n: int):
        try:
            return step(n)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{self.f.path}: cannot read IDX file: {first_line(e)}") from None

    def __call__(self, a: int, b: int) -> np.ndarray:
        data = self._guard(self.stream.read, (b - a) * self.row_bytes)
        if len(data) < (b - a) * self.row_bytes:
            raise DataError(f"{self.f.path}: IDX header says {self.f.shape} but the file ends at row "
                            f"{a + len(data) // max(self.row_bytes, 1)}")
        return np.frombuffer(data, np.dtype(self.f.dtype)).reshape(b - a, *self.f.shape[1:]).astype(self.native)

    def close(self, stop: int) -> None:
        extra = self._guard(self.stream.read, 1) if stop == self.f.rows else b""
        self.stream.close()
        if extra:
            raise DataError(f"{self.f.path}: IDX header says {self.f.shape} but the file holds more data")
