"""Where the training loop runs: under Ray Train, or plainly in one process.

The loop asks its environment for batches, for a model ready for this device (DDP-wrapped under Ray
Train), for the checkpoint to resume from, and to report an epoch. Ray touch points live only in
`RayTrainEnv`; `LocalEnv` needs neither Ray nor MLflow, so tests and GPU benchmarks can run the same loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from deepgen.config import AnomalySpec
from deepgen.data.dataset import normal_mask, normal_train_mask, split_path
from deepgen.errors import DataError
from deepgen.files import copy_into_place
from deepgen.train.accel import place_split

Batch = dict[str, torch.Tensor]  # column -> (B, ...) tensor, e.g. "features" (B, D), "target", "label" (B,)
TENSOR_COLUMNS = ("features", "target")  # what image and table families read; a task may ask for others


def column_to_numpy(column) -> np.ndarray:
    """A fixed-size-list column -> (N, D), a scalar column -> (N,): floats as float32, integers as int64."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(arr.type):
        values = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, arr.type.list_size)
    else:
        values = arr.to_numpy(zero_copy_only=False)
    if np.issubdtype(values.dtype, np.floating):
        return values.astype(np.float32, copy=False)
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return values.astype(np.int64, copy=False)
    raise DataError(f"column {arr.type} cannot be a tensor (labels must be numbers for this model)")


def arrow_tensors(table, columns: tuple[str, ...] = TENSOR_COLUMNS) -> Batch:
    """The wanted columns of an Arrow table or batch as tensors, without a per-row copy
    (iter_torch_batches converts list columns row by row, several times slower for wide rows)."""
    return {c: torch.from_numpy(column_to_numpy(table.column(c)).copy())
            for c in columns if c in table.column_names}


def tensor_batches(data: Batch, batch_size: int, epoch: int, seed: int, shuffle: bool,
                   device: torch.device) -> Iterator[Batch]:
    """Batches of an in-memory split (on the device already where it fits: `accel.place_split`); the
    shuffle order depends only on (seed, epoch), so a resumed run sees the same order an uninterrupted one
    would."""
    first = next(iter(data.values()))
    n = len(first)
    # drawn on the CPU whatever the device, so the order is the same on every device; moved once per epoch
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).to(first.device) \
        if shuffle else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if shuffle else slice(i, i + batch_size)
        yield {k: v[idx].to(device, non_blocking=True) for k, v in data.items()}


def pick_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


class LocalEnv:
    """One process, one device; checkpoints in `checkpoint_root/checkpoint_NNNNNN`."""

    world_rank = 0
    world_size = 1

    def __init__(self, data_dir: str | Path, anomaly: AnomalySpec, checkpoint_root: str | Path,
                 use_gpu: bool = False, keep: int = 2, seed: int = 0, stream: bool = False):
        self.device = pick_device(use_gpu)
        self.root = Path(checkpoint_root)
        self.keep = keep
        self.seed = seed
        self._tables = {}
        self._splits: dict[tuple[str, tuple[str, ...]], Batch] = {}
        # stream: read the splits' files every epoch (deepgen.train.stream) instead of holding them
        self.stream = stream
        self._groups: dict[str, list] = {}
        if stream:
            from deepgen.data.dataset import split_files
            from deepgen.train.stream import row_groups

            self.data_dir = data_dir
            self._keep = None if anomaly.normal_labels is None and anomaly.anomalous_labels is None \
                else (lambda t: normal_mask(t.column("label"), anomaly, t.num_rows))
            self._groups = {s: row_groups(split_files(data_dir, s), self._keep) for s in ("train", "val")}
            return
        for split in ("train", "val"):
            # an autoencoder for anomaly detection learns normal rows only, and is validated (its epoch
            # chosen, its training stopped) on normal rows only: anomalies never choose the model
            table = pq.read_table(split_path(data_dir, split))
            labels = table.column("label") if "label" in table.column_names else None
            mask = normal_train_mask if split == "train" else normal_mask
            self._tables[split] = table.filter(mask(labels, anomaly, table.num_rows))

    def num_rows(self, split: str) -> int:
        if self.stream:
            return sum(g.rows for g in self._groups[split])
        return self._tables[split].num_rows

    def batches(self, split: str, batch_size: int, epoch: int,
                columns: tuple[str, ...] = TENSOR_COLUMNS) -> Iterator[Batch]:
        if self.stream:
            from deepgen.data.dataset import split_files
            from deepgen.train.stream import stream_batches

            return stream_batches(split_files(self.data_dir, split), self._groups[split], batch_size, epoch, self.seed,
                                  0, 1, split == "train", columns, self._keep, column_to_numpy, self.device)
        if (split, columns) not in self._splits:
            self._splits[split, columns] = place_split(arrow_tensors(self._tables[split], columns), self.device)
        return tensor_batches(self._splits[split, columns], batch_size, epoch, self.seed, split == "train",
                              self.device)

    def prepare_model(self, model: nn.Module, ddp_options: dict | None = None) -> nn.Module:
        return model.to(self.device)

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.root.glob("checkpoint_[0-9]*")) if self.root.exists() else []
        return found[-1] if found else None

    @contextlib.contextmanager
    def checkpoint_to_resume(self) -> Iterator[Path | None]:
        yield self.latest_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            (checkpoint_dir / "metrics.json").write_text(json.dumps(metrics))
            # no torn checkpoint for a restart to resume from
            copy_into_place(checkpoint_dir, self.root / f"checkpoint_{metrics['epoch']:06d}")
            for old in sorted(self.root.glob("checkpoint_[0-9]*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sync_buffers(self, models: dict[str, nn.Module]) -> None:
        pass

    def say(self, message: str) -> None:
        print(f"[deepgen] {message}", flush=True)


class RayTrainEnv:
    """Inside `train_loop_per_worker`: dataset shards, DDP, `ray.train.report` with checkpoints."""

    def __init__(self, use_gpu: bool, seed: int = 0, cache_shards: bool = True, train_rows: int | None = None,
                 data_dir: str | Path | None = None, anomaly: AnomalySpec | None = None):
        import ray.train
        import ray.train.torch

        self._train = ray.train
        self._train_torch = ray.train.torch
        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        self.seed = seed
        self.cache_shards = cache_shards
        self.train_rows = train_rows  # the (normal) training rows of all workers, counted by the driver
        self._cache: dict[str, Batch] = {}
        # streaming (cache_shards false): each worker reads its share of the split's files itself
        self.data_dir, self.anomaly = data_dir, anomaly
        self._groups: dict[str, list] = {}

    def num_rows(self, split: str) -> int:
        if split != "train" or self.train_rows is None:
            raise ValueError(f"the driver counts only the train split's rows (asked for {split})")
        return self.train_rows

    def batches(self, split: str, batch_size: int, epoch: int,
                columns: tuple[str, ...] = TENSOR_COLUMNS) -> Iterator[Batch]:
        if not self.cache_shards and self.data_dir is not None:
            return self._stream_files(split, batch_size, epoch, columns)
        shard = self._train.get_dataset_shard(split)
        if self.cache_shards:
            # Ray Data starts a streaming execution per epoch (seconds on a small machine); a shard that
            # fits in memory is read once and shuffled locally from then on.
            if split not in self._cache:
                parts = [arrow_tensors(b, columns)
                         for b in shard.iter_batches(batch_size=8192, batch_format="pyarrow")]
                self._cache[split] = place_split({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, self.device)
            return tensor_batches(self._cache[split], batch_size, epoch, self.seed + self.world_rank,
                                  split == "train", self.device)
        raise ValueError("streaming (cache_shards false) needs the prepared data's folder (data_dir)")

    def _stream_files(self, split: str, batch_size: int, epoch: int, columns) -> Iterator[Batch]:
        """This rank's share of the split, streamed from its Parquet files (deepgen.train.stream): row group
        order and a local buffer shuffled per epoch, read ahead by a thread; memory bounded by the buffer."""
        from deepgen.data.dataset import split_files
        from deepgen.train.stream import row_groups, stream_batches

        keep = self._keep()
        files = split_files(self.data_dir, split)
        if split not in self._groups:
            self._groups[split] = row_groups(files, keep)
        return stream_batches(files, self._groups[split], batch_size, epoch, self.seed, self.world_rank,
                              self.world_size, split == "train", columns, keep, column_to_numpy, self.device)

    def _keep(self):
        """table -> the rows an autoencoder learns from and is validated on (its normal rows), or None."""
        anomaly = self.anomaly
        if anomaly is None or (anomaly.normal_labels is None and anomaly.anomalous_labels is None):
            return None
        return lambda t: normal_mask(t.column("label"), anomaly, t.num_rows)

    def prepare_model(self, model: nn.Module, ddp_options: dict | None = None) -> nn.Module:
        # DDP across workers (gloo on CPU, NCCL on GPU), with a task's DistributedDataParallel options; a
        # single worker is not wrapped.
        return self._train_torch.prepare_model(model, parallel_strategy_kwargs=ddp_options)

    @contextlib.contextmanager
    def checkpoint_to_resume(self) -> Iterator[Path | None]:
        """The last *registered* checkpoint of this run name as a local folder while the block runs (a
        download from remote storage is deleted after), or None on a fresh run."""
        ckpt = self._train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as local:
            yield Path(local)

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        from ray.train import Checkpoint

        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=checkpoint)

    def say(self, message: str) -> None:
        # Ray Train patches print() in workers to both print and log, which shows every line twice.
        logging.getLogger("deepgen").info(f"[deepgen] {message}")

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(t)
        return t

    def sync_buffers(self, models: dict[str, nn.Module]) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            broadcast_buffers(models)


def broadcast_buffers(models: dict[str, nn.Module]) -> None:
    """Every rank takes rank 0's buffers (batch norm's running statistics), so all evaluate and checkpoint
    the same model: needed where DDP's per-forward broadcast is off (GANs), a no-op change elsewhere."""
    for model in models.values():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
