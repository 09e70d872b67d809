"""A training worker's batches streamed from a prepared split's Parquet files (`train.cache_shards: false`).

Memory is bounded by the shuffle buffer and the prefetch queue, never by the split. Every epoch:

    1. the split's row groups (each file's, from the footers) are put in an order drawn from (seed, epoch)
    2. the kept rows (an autoencoder's normal rows) of that sequence are cut into `world_size` equal, contiguous
       ranges; rank r reads only the row groups its range overlaps: every rank trains the same number of
       batches, which DDP needs, and together the ranks see every row once (less rows // world_size's
       remainder)
    3. rows pass through a local shuffle buffer (permuted with a generator seeded by (seed, epoch, rank))
       before they are cut into batches
    4. a background thread reads, filters and shuffles ahead, so the step does not wait on Parquet

The order depends only on (seed, epoch, world_size): a resumed run sees the epochs an uninterrupted one would.
Validation is read the same way, unshuffled.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

SHUFFLE_BUFFER_ROWS = 16384  # rows mixed across row groups before batching
PREFETCH_CHUNKS = 2  # shuffled chunks read ahead by the background thread

Keep = Callable[[pa.Table], np.ndarray]  # table -> (N,) bool rows to train on


@dataclass(frozen=True)
class RowGroup:
    file: Path
    index: int
    rows: int  # kept rows (after `keep`)


def row_groups(files: list[Path], keep: Keep | None = None, label: str = "label") -> list[RowGroup]:
    """Every row group of `files` with its count of kept rows: footers only, plus the label column when
    `keep` needs it (a few bytes a row)."""
    groups = []
    for f in files:
        pf = pq.ParquetFile(f)
        has_label = label in pf.schema_arrow.names
        for i in range(pf.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if keep is not None and has_label:
                n = int(keep(pf.read_row_group(i, columns=[label])).sum())
            groups.append(RowGroup(f, i, n))
    return groups


def epoch_plan(groups: list[RowGroup], seed: int, epoch: int, rank: int, world_size: int,
               shuffle: bool) -> list[tuple[RowGroup, int, int]]:
    """This rank's (row group, first kept row, end) slices for the epoch: an equal share of a
    (seed, epoch)-ordered sequence of row groups."""
    order = np.random.default_rng([seed, epoch]).permutation(len(groups)) if shuffle else np.arange(len(groups))
    total = sum(g.rows for g in groups)
    share = total // world_size
    lo, hi = rank * share, (rank + 1) * share
    plan, at = [], 0
    for i in order:
        g = groups[i]
        start, end = max(lo, at), min(hi, at + g.rows)
        if start < end:
            plan.append((g, start - at, end - at))
        at += g.rows
    return plan


def read_plan(plan: list[tuple[RowGroup, int, int]], columns: tuple[str, ...], keep: Keep | None) -> Iterator[pa.Table]:
    """The kept rows of each planned slice, in plan order."""
    files: dict[Path, pq.ParquetFile] = {}
    for g, start, end in plan:
        pf = files.get(g.file) or files.setdefault(g.file, pq.ParquetFile(g.file))
        names = pf.schema_arrow.names
        wanted = [c for c in columns if c in names]
        if keep is not None and "label" in names and "label" not in wanted:
            wanted.append("label")
        table = pf.read_row_group(g.index, columns=wanted, use_threads=False)  # the cores are the step's
        if keep is not None and "label" in names:
            table = table.filter(pa.array(keep(table)))
        yield table.slice(start, end - start)


def shuffled_chunks(tables: Iterator[pa.Table], columns: tuple[str, ...], rng: np.random.Generator | None,
                    buffer_rows: int, to_numpy) -> Iterator[dict[str, torch.Tensor]]:
    """Tables -> chunks of tensors: rows gathered up to `buffer_rows`, permuted (when `rng`), and handed on
    as one chunk, the rows of one buffer never split by a row group boundary's order."""
    pending: list[pa.Table] = []
    size = 0
    for t in tables:
        pending.append(t)
        size += t.num_rows
        if size >= buffer_rows:
            yield _chunk(pending, columns, rng, to_numpy)
            pending, size = [], 0
    if size:
        yield _chunk(pending, columns, rng, to_numpy)


def _chunk(tables: list[pa.Table], columns, rng, to_numpy) -> dict[str, torch.Tensor]:
    """One buffer's tables -> a tensor per column, its rows permuted by `rng`, in one pass: each table's
    column is a view of Arrow's memory (`to_numpy`, column -> array) copied straight to its rows' shuffled
    places (no concatenation, no second copy to shuffle) by torch, which leaves the GIL to the training step
    while it copies (numpy's fancy assignment holds it)."""
    n = sum(t.num_rows for t in tables)
    places = torch.from_numpy(rng.permutation(n)) if rng is not None else None
    out = {}
    for c in (c for c in columns if c in tables[0].column_names):
        at, buf = 0, None
        for t in tables:
            part = _read_only_tensor(to_numpy(_one_chunk(t.column(c))))
            if buf is None:
                buf = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
            if places is None:
                buf[at:at + len(part)] = part
            else:
                buf.index_copy_(0, places[at:at + len(part)], part)
            at += len(part)
        out[c] = buf
    return out


def _read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over Arrow's read-only memory, only ever read from (torch warns that it could be written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def prefetched(chunks: Iterator, depth: int = PREFETCH_CHUNKS) -> Iterator:
    """`chunks` produced by a background thread, up to `depth` ahead; its error is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for c in chunks:
                while not stop.is_set():
                    try:
                        q.put(c, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="deepgen-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def stream_batches(files: list[Path], groups: list[RowGroup], batch_size: int, epoch: int, seed: int, rank: int,
                   world_size: int, shuffle: bool, columns: tuple[str, ...], keep: Keep | None, to_numpy,
                   device: torch.device, buffer_rows: int = SHUFFLE_BUFFER_ROWS) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of this rank's share of a split for one epoch (see the module's docstring)."""
    plan = epoch_plan(groups, seed, epoch, rank, world_size, shuffle)
    rng = np.random.default_rng([seed, epoch, rank]) if shuffle else None
    carry: dict[str, torch.Tensor] | None = None  # a chunk's last rows that did not fill a batch
    for chunk in prefetched(shuffled_chunks(read_plan(plan, columns, keep), columns, rng,
                                            max(buffer_rows, batch_size), to_numpy)):
        n, at = len(next(iter(chunk.values()))), 0
        if carry is not None:  # the batch across two chunks: only its own rows are copied
            at = min(batch_size - len(next(iter(carry.values()))), n)
            carry = {k: torch.cat([carry[k], v[:at]]) for k, v in chunk.items()}
            if len(next(iter(carry.values()))) < batch_size:
                continue
            yield {k: v.to(device, non_blocking=True) for k, v in carry.items()}
            carry = None
        full = n - (n - at) % batch_size
        for i in range(at, full, batch_size):
            yield {k: v[i:i + batch_size].to(device, non_blocking=True) for k, v in chunk.items()}
        if full < n:
            carry = {k: v[full:] for k, v in chunk.items()}
    if carry is not None:
        yield {k: v.to(device, non_blocking=True) for k, v in carry.items()}
