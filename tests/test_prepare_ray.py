"""The Ray Data prepare (data.engine: ray_data): streamed passes over a table source, many files per split,
a manifest naming them written last, and the one-line error contract with nothing published."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepgen.config import DataSpec
from deepgen.data.dataset import load_split, split_files, split_rows
from deepgen.data.manifest import read_manifest
from deepgen.data.prepare import prepare_dataset
from deepgen.data.prepare_ray import assign_splits, use_ray_data
from deepgen.errors import DataError

quiet = {"log": lambda m: None}


def parts(folder, n_files=3, rows=400, seed=0):
    """A folder of Parquet part files: 3 features (one 0/1), an int label; returns the whole table."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tables = []
    for i in range(n_files):
        t = pa.table({"a": rng.normal(size=rows) * 10 + 5, "b": rng.integers(0, 2, rows).astype(np.float64),
                      "c": rng.uniform(-3, 3, rows), "label": rng.integers(0, 3, rows)})
        pq.write_table(t, folder / f"part-{i}.parquet")
        tables.append(t)
    return pa.concat_tables(tables)


def ray_spec(path, **kw) -> DataSpec:
    return DataSpec.model_validate({"source": {"kind": "table", "path": str(path), "label_column": "label"},
                                    "engine": "ray_data", **kw})


def test_ray_data_prepare_writes_split_folders_a_manifest_of_files_and_a_hash_split(tmp_path, ray_local):
    whole = parts(tmp_path / "src")
    manifest, wrote = prepare_dataset(ray_spec(tmp_path / "src"), tmp_path / "out", **quiet)
    assert wrote and sum(manifest.rows.values()) == whole.num_rows
    assert manifest.rows["train"] > manifest.rows["val"] > 0 and manifest.rows["test"] > 0
    # the manifest names every part file, with the rows its footer holds
    for split, entries in manifest.files.items():
        assert [f.name for f in split_files(tmp_path / "out", split)] == [e["name"] for e in entries]
        assert split_rows(tmp_path / "out", split) == manifest.rows[split] == sum(e["rows"] for e in entries)
    # min-max fitted on train rows by the streamed aggregate: the same range the rows have
    x = np.stack([whole.column(c).to_numpy() for c in "abc"], 1).astype(np.float32)
    codes = assign_splits(x, ray_spec(tmp_path / "src"))
    assert np.allclose(manifest.scaler.minimum, x[codes == 0].min(0)) and \
        np.allclose(manifest.scaler.maximum, x[codes == 0].max(0))
    x_train, y_train = load_split(tmp_path / "out", "train")  # a folder split reads like a file
    assert x_train.shape == (manifest.rows["train"], 3) and y_train.dtype == np.int64
    assert np.isclose(x_train.min(), 0) and np.isclose(x_train.max(), 1)
    # the split is the row hash's: test rows are exactly the rows whose hash says test
    x_test, _ = load_split(tmp_path / "out", "test")
    raw_test = np.asarray(manifest.scaler.invert(x_test))
    assert np.allclose(np.sort(raw_test[:, 0]), np.sort(x[codes == 2][:, 0]), atol=1e-4)
    assert manifest.label_type == "int" and not manifest.binary_features
    # unchanged source: nothing rewritten
    assert prepare_dataset(ray_spec(tmp_path / "src"), tmp_path / "out", **quiet)[1] is False


def test_the_same_rows_get_the_same_split_however_the_files_are_cut(tmp_path, ray_local):
    whole = parts(tmp_path / "three", n_files=3)
    (tmp_path / "one").mkdir()
    pq.write_table(whole, tmp_path / "one" / "all.parquet")
    a, _ = prepare_dataset(ray_spec(tmp_path / "three"), tmp_path / "a", **quiet)
    b, _ = prepare_dataset(ray_spec(tmp_path / "one"), tmp_path / "b", **quiet)
    assert a.rows == b.rows
    for split in ("train", "val", "test"):
        xa, xb = load_split(tmp_path / "a", split)[0], load_split(tmp_path / "b", split)[0]
        assert np.array_equal(xa[np.lexsort(xa.T)], xb[np.lexsort(xb.T)])
    other, _ = prepare_dataset(ray_spec(tmp_path / "one", seed=1), tmp_path / "c", **quiet)
    assert other.fingerprint != b.fingerprint and other.rows != b.rows  # another seed, another split


def test_csv_files_binary_features_and_auto_keeps_small_sources_in_memory(tmp_path, ray_local):
    (tmp_path / "csv").mkdir()
    for i in range(2):  # 0/1 features (the bits of a row id): min-max maps them to {0, 1}, so the data is binary
        rows = "\n".join(",".join(str((j >> k) & 1) for k in range(10)) + f",{j % 3}"
                         for j in range(300 * i, 300 * (i + 1)))
        (tmp_path / "csv" / f"p{i}.csv").write_text(",".join(f"u{k}" for k in range(10)) + ",label\n" + rows + "\n")
    manifest, _ = prepare_dataset(ray_spec(tmp_path / "csv"), tmp_path / "out", **quiet)
    assert manifest.binary_features and sum(manifest.rows.values()) == 600 and manifest.label_type == "int"
    auto = DataSpec.model_validate({"source": {"kind": "table", "path": str(tmp_path / "csv" / "p0.csv")}})
    assert not use_ray_data(auto)  # a few KiB: the in-memory prepare, one file per split
    small, _ = prepare_dataset(auto, tmp_path / "small", **quiet)
    assert small.files is None and (tmp_path / "small" / "train.parquet").is_file()


@pytest.fixture(scope="module")
def good(tmp_path_factory, ray_local):
    """A source folder and its prepared dataset, copied by each bad-input case."""
    root = tmp_path_factory.mktemp("good")
    parts(root / "src")
    prepare_dataset(ray_spec(root / "src"), root / "out", **quiet)
    return root


@pytest.mark.parametrize("case", ["unreadable", "missing_column", "other_type", "nan", "csv_text"])
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_published(tmp_path, good, case):
    shutil.copytree(good / "src", tmp_path / "src")
    # an earlier good dataset in place: a failed prepare must leave it as it was
    shutil.copytree(good / "out", tmp_path / "out")
    before = json.loads((tmp_path / "out" / "manifest.json").read_text())
    bad = tmp_path / "src" / "part-9.parquet"
    rng = np.random.default_rng(1)
    if case == "unreadable":
        bad.write_bytes(b"PAR1 this is not parquet")
        message = r"part-9.parquet: cannot read Parquet file"
    elif case == "missing_column":
        pq.write_table(pa.table({"a": rng.normal(size=50), "b": rng.normal(size=50), "label": np.zeros(50, int)}), bad)
        message = r"part-9.parquet: no column 'c'"
    elif case == "other_type":
        pq.write_table(pa.table({"a": rng.normal(size=50), "b": rng.normal(size=50),
                                 "c": rng.normal(size=50).astype(np.float32), "label": np.zeros(50, int)}), bad)
        message = r"part-9.parquet: column 'c' is float where part-0.parquet has double"
    elif case == "nan":
        c = rng.normal(size=50)
        c[17] = np.nan
        pq.write_table(pa.table({"a": rng.normal(size=50), "b": rng.normal(size=50), "c": c,
                                 "label": np.zeros(50, int)}), bad)
        message = r"part-9.parquet: non-finite value \(nan\) in column 'c'"
    else:
        for p in (tmp_path / "src").glob("*.parquet"):
            p.unlink()
        (tmp_path / "src" / "a.csv").write_text("a,b,c,label\n" + "1,2,3,0\n" * 50)
        (tmp_path / "src" / "b.csv").write_text("a,b,c,label\n" + "1,2,3,0\n" * 20 + "1,x,3,0\n")
        message = r"b.csv"
    with pytest.raises(DataError, match=message) as err:
        prepare_dataset(ray_spec(tmp_path / "src"), tmp_path / "out", **quiet)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folder left
    assert read_manifest(tmp_path / "out").fingerprint == before["fingerprint"]


def test_engine_ray_data_refuses_sources_it_does_not_stream(tmp_path):
    spec = DataSpec.model_validate({"source": {"kind": "digits"}, "engine": "ray_data"})
    with pytest.raises(DataError, match="data.engine: ray_data prepares table sources"):
        prepare_dataset(spec, tmp_path / "out", **quiet)
