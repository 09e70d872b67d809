import gzip
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bar_images

from deepgen.config import AnomalySpec, DataSpec
from deepgen.data.dataset import check_normal_rows, load_split, normal_mask
from deepgen.data.prepare import prepare_dataset, read_manifest
from deepgen.data.sources import read_idx_file
from deepgen.errors import DataError
from deepgen.train.env import LocalEnv


def write_idx(path, array: np.ndarray, gz: bool = False):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(directory, n_train=120, n_test=40, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    x, y = bar_images(n_train, seed=2, size=10)
    xt, yt = bar_images(n_test, seed=3, size=10)
    write_idx(directory / "train-images-idx3-ubyte", x, gz)
    write_idx(directory / "train-labels-idx1-ubyte", y.astype(np.uint8), gz)
    write_idx(directory / "t10k-images-idx3-ubyte", xt, gz)
    write_idx(directory / "t10k-labels-idx1-ubyte", yt.astype(np.uint8), gz)
    return directory, (x, y, xt, yt)


def data_spec(source: dict, **kw) -> DataSpec:
    return DataSpec.model_validate({"source": source, **kw})


def test_idx_file_round_trip_plain_and_gzipped(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx_file(write_idx(tmp_path / "a-idx3-ubyte", a)), a)
    assert np.array_equal(read_idx_file(write_idx(tmp_path / "b-idx3-ubyte", a, gz=True)), a)
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="junk: not an IDX file"):
        read_idx_file(tmp_path / "junk")


def test_idx_directory_keeps_the_official_test_split(tmp_path):
    directory, (x, y, xt, yt) = make_idx_dir(tmp_path / "mnist", gz=True)
    manifest, wrote = prepare_dataset(data_spec({"kind": "idx", "path": str(directory)}, val_fraction=0.25),
                                      tmp_path / "out", log=lambda m: None)
    assert wrote and manifest.shape == [1, 10, 10]
    assert manifest.rows == {"train": 90, "val": 30, "test": 40}
    x_test, y_test = load_split(tmp_path / "out", "test")
    assert np.allclose(x_test, xt.reshape(40, -1) / 255.0) and np.array_equal(y_test, yt)
    assert x_test.min() >= 0 and x_test.max() <= 1


def test_digits_splits_manifest_and_no_rework(tmp_path):
    spec = data_spec({"kind": "digits"})
    manifest, wrote = prepare_dataset(spec, tmp_path / "d", log=lambda m: None)
    assert wrote and sum(manifest.rows.values()) == 1797 and manifest.shape == [1, 8, 8]
    assert manifest.arrow_schema == {"features": "fixed_size_list<item: float>[64]", "label": "int64"}
    on_disk = read_manifest(tmp_path / "d")
    assert on_disk == manifest
    messages = []
    again, wrote = prepare_dataset(spec, tmp_path / "d", log=messages.append)
    assert not wrote and again.fingerprint == manifest.fingerprint
    assert "up to date" in messages[0] and "nothing to do" in messages[0]
    changed, wrote = prepare_dataset(data_spec({"kind": "digits"}, seed=1), tmp_path / "d", log=lambda m: None)
    assert wrote and changed.fingerprint != manifest.fingerprint


def test_npy_and_labels(tmp_path, bars_npy):
    x_path, y_path = bars_npy
    manifest, _ = prepare_dataset(data_spec({"kind": "npy", "path": str(x_path), "labels": str(y_path)}),
                                  tmp_path / "out", log=lambda m: None)
    assert manifest.shape == [1, 8, 8] and manifest.label_type == "int" and manifest.scaler.divisor == 255


def test_csv_table_with_string_labels_and_minmax_scaling(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,kind"] + [f"{rng.normal():.4f},{rng.normal() * 10:.4f},{'ok' if i % 5 else 'bad'}"
                           for i in range(100)]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    manifest, _ = prepare_dataset(data_spec({"kind": "table", "path": str(tmp_path / "t.csv"),
                                             "label_column": "kind"}), tmp_path / "out", log=lambda m: None)
    assert manifest.feature_names == ["a", "b"] and manifest.label_type == "str"
    x, labels = load_split(tmp_path / "out", "train")
    assert x.min() == pytest.approx(0) and x.max() == pytest.approx(1)
    normal = normal_mask(labels, AnomalySpec(anomalous_labels=["bad"]), len(labels))
    assert normal.sum() == (labels == "ok").sum()
    # a spec that leaves nothing to learn from is refused on the driver and by the plain loop, in one line
    for spec, field in ((AnomalySpec(normal_labels=["fine"]), "normal_labels"),
                        (AnomalySpec(anomalous_labels=["ok", "bad"]), "anomalous_labels")):
        message = rf"^anomaly.{field}: no training row is normal under it \(the train split's labels are " \
                  r"\['bad', 'ok'\]\)"
        with pytest.raises(DataError, match=message):
            check_normal_rows(tmp_path / "out", spec)
        with pytest.raises(DataError, match=message):
            LocalEnv(tmp_path / "out", spec, tmp_path / "ckpt")
    check_normal_rows(tmp_path / "out", AnomalySpec(normal_labels=["ok"]))


def test_a_table_source_may_be_a_folder_of_parquet_parts(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "parts").mkdir()
    for i in range(2):
        pq.write_table(pa.table({"a": rng.normal(size=30), "b": rng.normal(size=30)}),
                       tmp_path / "parts" / f"part-{i}.parquet")
    spec = data_spec({"kind": "table", "path": str(tmp_path / "parts")})
    manifest, _ = prepare_dataset(spec, tmp_path / "out", log=lambda m: None)
    assert sum(manifest.rows.values()) == 60
    part = pa.table({"a": rng.normal(size=30), "b": rng.normal(size=30)})
    pq.write_table(part, tmp_path / "parts" / "part-1.parquet")
    changed, _ = prepare_dataset(spec, tmp_path / "out", log=lambda m: None)
    assert changed.source_fingerprint != manifest.source_fingerprint  # a changed part is new data


def test_preparing_leaves_a_live_prepares_folder_alone_and_removes_a_dead_ones(tmp_path):
    import os
    import time

    live, dead = tmp_path / ".out.tmp-live", tmp_path / ".out.tmp-dead"
    live.mkdir(), dead.mkdir()
    os.utime(dead, (time.time() - 2 * 86400,) * 2)  # a killed prepare's, two days old
    prepare_dataset(data_spec({"kind": "digits"}), tmp_path / "out", log=lambda m: None)
    assert live.is_dir() and not dead.exists()
    assert read_manifest(tmp_path / "out") is not None


def test_nan_or_infinite_features_fail_without_any_output(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,nan\n" + "\n".join(f"{i},{i}" for i in range(40)))
    with pytest.raises(DataError, match=r"t.csv: column 'b' has 1 missing values"):
        prepare_dataset(data_spec({"kind": "table", "path": str(tmp_path / "t.csv")}), tmp_path / "out",
                        log=lambda m: None)
    x = np.ones((50, 4), np.float32)
    x[7, 2] = np.inf
    np.save(tmp_path / "x.npy", x)
    message = r"x.npy: non-finite value \(inf\) in the features \(1 rows, first at row 7, feature 2\)"
    with pytest.raises(DataError, match=message):
        prepare_dataset(data_spec({"kind": "npy", "path": str(tmp_path / "x.npy")}), tmp_path / "out",
                        log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "x.npy"]  # no output, no temp folder


def test_failed_rewrite_keeps_the_previous_dataset(tmp_path, monkeypatch):
    spec = data_spec({"kind": "digits"})
    prepare_dataset(spec, tmp_path / "d", log=lambda m: None)
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}

    def crash(table, where, *a, **k):
        if str(where).endswith("test.parquet"):
            raise OSError("disk full")
        return real_write(table, where, *a, **k)

    real_write = pq.write_table
    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(data_spec({"kind": "digits"}, seed=5), tmp_path / "d", log=lambda m: None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_empty_split_is_an_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="the val split would be empty"):
        prepare_dataset(data_spec({"kind": "npy", "path": str(tmp_path / "x.npy")}, val_fraction=0.1),
                        tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_wrong_parquet_schema_names_the_column(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": ["x", "y"]}), tmp_path / "t.parquet")
    spec = data_spec({"kind": "table", "path": str(tmp_path / "t.parquet"), "feature_columns": ["a", "b"]})
    with pytest.raises(DataError, match=r"t.parquet: column 'b' is string, expected numbers"):
        prepare_dataset(spec, tmp_path / "out", log=lambda m: None)
    spec = data_spec({"kind": "table", "path": str(tmp_path / "t.parquet"), "label_column": "kind"})
    with pytest.raises(DataError, match=r"t.parquet: no label column 'kind'"):
        prepare_dataset(spec, tmp_path / "out", log=lambda m: None)


def test_missing_source_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.npy: no such file"):
        prepare_dataset(data_spec({"kind": "npy", "path": str(tmp_path / "nope.npy")}), tmp_path / "o",
                        log=lambda m: None)
    with pytest.raises(DataError, match=r"missing train-images-idx3-ubyte\[.gz\]"):
        (tmp_path / "empty").mkdir()
        prepare_dataset(data_spec({"kind": "idx", "path": str(tmp_path / "empty")}), tmp_path / "o",
                        log=lambda m: None)
