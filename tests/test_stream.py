"""Streaming training data (train.cache_shards: false): each rank's equal share of a split read from its
Parquet files, row group order and a local buffer shuffled per epoch, normal rows only, read ahead."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_pipeline

from deepgen.config import AnomalySpec, PipelineSpec
from deepgen.data.dataset import normal_mask
from deepgen.train.env import column_to_numpy
from deepgen.train.stream import row_groups, stream_batches


def split_folder(tmp_path, n_files=3, rows=500, group=64):
    """Part files of rows whose feature 0 is the row id (0..N-1), label 1 on every 5th row."""
    folder = tmp_path / "train.parquet"
    folder.mkdir()
    ids = np.arange(n_files * rows)
    for i in range(n_files):
        part = ids[i * rows:(i + 1) * rows]
        x = np.stack([part, part * 2], 1).astype(np.float32)
        t = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 2),
                      "label": (part % 5 == 0).astype(np.int64)})
        pq.write_table(t, folder / f"part-{i}.parquet", row_group_size=group)
    return sorted(folder.glob("*.parquet"))


def epoch_ids(files, groups, epoch, rank, world, keep=None, shuffle=True, batch=32, buffer=200):
    batches = list(stream_batches(files, groups, batch, epoch, seed=7, rank=rank, world_size=world, shuffle=shuffle,
                                  columns=("features", "label"), keep=keep, to_numpy=column_to_numpy,
                                  device=torch.device("cpu"), buffer_rows=buffer))
    return [b["features"][:, 0].long().tolist() for b in batches]


def test_ranks_share_every_row_once_in_equal_batches_and_epochs_reorder_row_groups(tmp_path):
    files = split_folder(tmp_path)
    groups = row_groups(files)
    assert len(groups) == 3 * 8 and sum(g.rows for g in groups) == 1500
    per_rank = [epoch_ids(files, groups, 1, r, 2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 24  # 750 rows each in batches of 32: DDP's equal steps
    seen = [i for batches in per_rank for b in batches for i in b]
    assert sorted(seen) == list(range(1500))  # every row once across the ranks
    flat = [i for b in per_rank[0] for i in b]
    # the local buffer mixes rows across row groups; the next epoch reads another row group order
    assert flat != sorted(flat) and len({i // 64 for i in flat[:32]}) > 1
    assert epoch_ids(files, groups, 2, 0, 2) != per_rank[0]
    assert epoch_ids(files, groups, 1, 0, 2) == per_rank[0]  # (seed, epoch) decide: a resume sees the same
    assert [i for b in epoch_ids(files, groups, 1, 0, 1, shuffle=False) for i in b] == list(range(1500))


def test_only_normal_rows_stream_and_shares_stay_equal(tmp_path):
    files = split_folder(tmp_path)
    anomaly = AnomalySpec(anomalous_labels=[1])

    def keep(t):
        return normal_mask(t.column("label"), anomaly, t.num_rows)

    groups = row_groups(files, keep)
    assert sum(g.rows for g in groups) == 1200
    per_rank = [[i for b in epoch_ids(files, groups, 3, r, 3, keep=keep) for i in b] for r in range(3)]
    assert [len(r) for r in per_rank] == [400, 400, 400]
    assert sorted(sum(per_rank, [])) == [i for i in range(1500) if i % 5]


def test_a_reader_error_reaches_the_training_loop(tmp_path):
    files = split_folder(tmp_path, n_files=1)
    groups = row_groups(files)
    files[0].write_bytes(b"damaged")
    with pytest.raises(Exception, match="(?i)parquet|magic"):
        epoch_ids(files, groups, 1, 0, 1)


def test_ray_train_streams_from_the_files_of_a_ray_data_prepare(tmp_path, ray_local):
    """Two workers, cache_shards false, on a dataset the Ray Data prepare wrote as part files."""
    from deepgen import orchestrate
    from deepgen.data.prepare import prepare_dataset

    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"a": rng.normal(size=300), "b": rng.normal(size=300),
                                 "label": (rng.random(300) < 0.2).astype(np.int64)}), tmp_path / "src" / f"{i}.parquet")
    spec = PipelineSpec.from_yaml(write_pipeline(
        tmp_path / "p.yaml", data={"source": {"kind": "table", "path": str(tmp_path / "src"), "label_column": "label"},
                                   "engine": "ray_data"},
        train={"epochs": 2, "batch_size": 32, "cache_shards": False}, scaling={"num_workers": 2},
        anomaly={"anomalous_labels": [1]}))
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    result = orchestrate.fit_trainer(spec, manifest, None, None)
    history = result.metrics
    assert result.checkpoint is not None and history["epoch"] == 2
    normal = orchestrate.normal_row_count(spec.data_dir, spec.anomaly)
    # each of 2 ranks trained its equal share: rows_per_s * time = both ranks' rows
    assert abs(history["rows_per_s"] * history["step_time_ms"] / 1e3 * np.ceil(normal // 2 / 32)
               - normal // 2 * 2) < 2


def test_a_plain_run_can_stream_too_and_sees_the_rows_it_would_hold(tmp_path):
    """LocalEnv(stream=True): the same normal rows per epoch as the in-memory LocalEnv, read from the files."""
    from deepgen.data.prepare import prepare_dataset
    from deepgen.train.env import LocalEnv

    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"))  # digits, anomalous label 9
    prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    held = LocalEnv(spec.data_dir, spec.anomaly, tmp_path / "a")
    streamed = LocalEnv(spec.data_dir, spec.anomaly, tmp_path / "b", stream=True)
    assert streamed.num_rows("train") == held.num_rows("train") < 1257  # normal rows only

    def rows(env, epoch):
        return np.concatenate([b["features"].numpy() for b in env.batches("train", 64, epoch)])

    a, b = rows(held, 1), rows(streamed, 1)
    assert np.array_equal(a[np.lexsort(a.T)], b[np.lexsort(b.T)])
    assert not np.array_equal(rows(streamed, 1), rows(streamed, 2))  # reshuffled every epoch
