"""The Ray Data prepare (data.engine: ray_data): streamed passes over a table source, many files per split,
a manifest naming them written last, and the one-line error contract with nothing published."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data import make_idx_dir

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


@pytest.mark.slow
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
    with pytest.raises(DataError, match="data.engine: ray_data prepares table, npy, idx and image_table sources"):
        prepare_dataset(spec, tmp_path / "out", **quiet)
    resized = DataSpec.model_validate({"source": {"kind": "npy", "path": str(tmp_path / "x.npy")}, "resize": 16,
                                       "engine": "ray_data"})
    with pytest.raises(DataError, match="data.resize: the ray_data engine does not resize"):
        prepare_dataset(resized, tmp_path / "out", **quiet)
    assert not (tmp_path / "out").exists()


# --- array sources: .npy and IDX, read by a datasource of row ranges -----------------------------------


def all_rows(out, splits=("train", "val", "test")) -> np.ndarray:
    """Every prepared row of `splits`, features then label, sorted: a multiset to compare."""
    rows = []
    for split in splits:
        x, y = load_split(out, split)
        rows.append(np.column_stack([x, np.zeros(len(x)) if y is None else y]))
    rows = np.concatenate(rows)
    return rows[np.lexsort(rows.T[::-1])]


def array_spec(source: dict, engine="ray_data", **kw) -> DataSpec:
    return DataSpec.model_validate({"source": source, "engine": engine, **kw})


def test_npy_images_through_ray_data_match_the_in_memory_prepare(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1200, 6, 6)).astype(np.uint8)  # (N, H, W): one channel, as in memory
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", rng.integers(0, 4, 1200).astype(np.int32))
    source = {"kind": "npy", "path": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")}
    assert use_ray_data(array_spec(source))
    ray, _ = prepare_dataset(array_spec(source), tmp_path / "ray", **quiet)
    memory, _ = prepare_dataset(array_spec(source, "memory"), tmp_path / "memory", **quiet)
    # what training reads of the manifest is the same: image shape, the fixed /255 scale, label type, columns
    assert ray.shape == memory.shape == [1, 6, 6] and ray.scaler == memory.scaler
    assert ray.label_type == memory.label_type == "int" and ray.feature_names is None
    assert ray.arrow_schema["label"] == memory.arrow_schema["label"] == "int32"
    assert ray.binary_features == memory.binary_features is False
    for split, entries in ray.files.items():
        assert [f.name for f in split_files(tmp_path / "ray", split)] == [e["name"] for e in entries]
        assert split_rows(tmp_path / "ray", split) == ray.rows[split]
    # another split rule (a row hash, not a permutation): every source row once, the same scaled values
    assert np.array_equal(all_rows(tmp_path / "ray"), all_rows(tmp_path / "memory"))
    assert abs(ray.rows["test"] - 180) < 60 and abs(ray.rows["val"] - 180) < 60
    again, wrote = prepare_dataset(array_spec(source), tmp_path / "again", **quiet)
    assert wrote and again.rows == ray.rows
    for split in ("train", "val", "test"):  # the same split on every run
        assert np.array_equal(all_rows(tmp_path / "again", [split]), all_rows(tmp_path / "ray", [split]))
    assert prepare_dataset(array_spec(source), tmp_path / "ray", **quiet)[1] is False


def test_npy_table_of_floats_is_min_max_scaled_on_its_train_rows(tmp_path, ray_local):
    x = np.random.default_rng(1).normal(size=(800, 5)).astype(np.float32) * [1, 10, 100, 1, 1]
    np.save(tmp_path / "x.npy", x)
    source = {"kind": "npy", "path": str(tmp_path / "x.npy")}
    ray, _ = prepare_dataset(array_spec(source), tmp_path / "ray", **quiet)
    memory, _ = prepare_dataset(array_spec(source, "memory"), tmp_path / "memory", **quiet)
    assert ray.shape == memory.shape == [5] and ray.label_type is None and "label" not in ray.arrow_schema
    train = x[assign_splits(x, array_spec(source)) == 0]
    assert np.allclose(ray.scaler.minimum, train.min(0)) and np.allclose(ray.scaler.maximum, train.max(0))
    raw = lambda out, m: np.sort(m.scaler.invert(all_rows(out)[:, :5]), axis=0)  # noqa: E731
    assert np.allclose(raw(tmp_path / "ray", ray), raw(tmp_path / "memory", memory), atol=1e-4)
    x_train, _ = load_split(tmp_path / "ray", "train")
    assert np.isclose(x_train.min(), 0) and np.isclose(x_train.max(), 1)


def test_idx_through_ray_data_keeps_t10k_as_test_and_reads_gzip(tmp_path, ray_local):
    plain, (x, y, xt, yt) = make_idx_dir(tmp_path / "idx", n_train=900, n_test=150)
    zipped, _ = make_idx_dir(tmp_path / "idx_gz", n_train=900, n_test=150, gz=True)
    source = {"kind": "idx", "path": str(plain)}
    ray, _ = prepare_dataset(array_spec(source), tmp_path / "ray", **quiet)
    memory, _ = prepare_dataset(array_spec(source, "memory"), tmp_path / "memory", **quiet)
    assert ray.shape == memory.shape == [1, 10, 10] and ray.scaler == memory.scaler and ray.scaler.divisor == 255
    assert ray.arrow_schema["label"] == memory.arrow_schema["label"] == "int64" and ray.label_type == "int"
    # the official test split is t10k, exactly; val is carved from the train files, near val_fraction
    assert ray.rows["test"] == 150 and np.array_equal(all_rows(tmp_path / "ray", ["test"]),
                                                      all_rows(tmp_path / "memory", ["test"]))
    assert np.array_equal(all_rows(tmp_path / "ray", ["train", "val"]), all_rows(tmp_path / "memory", ["train", "val"]))
    assert abs(ray.rows["val"] - 135) < 45
    gz, _ = prepare_dataset(array_spec({"kind": "idx", "path": str(zipped)}), tmp_path / "gz", **quiet)
    assert gz.rows == ray.rows
    for split in ("train", "val", "test"):  # gzipped or not, the same rows in the same splits
        assert np.array_equal(all_rows(tmp_path / "gz", [split]), all_rows(tmp_path / "ray", [split]))


@pytest.mark.parametrize("pixels", [255, 1])
def test_image_table_through_ray_data_matches_the_in_memory_prepare(tmp_path, ray_local, pixels):
    rng = np.random.default_rng(3)
    (tmp_path / "src").mkdir()
    for i in range(2):  # 8-bit pixels (scaled /255) or values already in [0, 1] (/1), as in memory
        images = rng.integers(0, 256, (400, 2 * 4 * 4)) if pixels == 255 else rng.random((400, 2 * 4 * 4))
        pq.write_table(pa.table({"image": list(images), "label": rng.integers(0, 3, 400)}),
                       tmp_path / "src" / f"part-{i}.parquet")
    source = {"kind": "image_table", "path": str(tmp_path / "src"), "image_shape": [2, 4, 4]}
    ray, _ = prepare_dataset(array_spec(source), tmp_path / "ray", **quiet)
    memory, _ = prepare_dataset(array_spec(source, "memory"), tmp_path / "memory", **quiet)
    assert ray.shape == memory.shape == [2, 4, 4] and ray.scaler == memory.scaler
    assert ray.scaler.divisor == pixels and ray.label_type == memory.label_type == "int"
    assert np.allclose(all_rows(tmp_path / "ray"), all_rows(tmp_path / "memory"))
    assert sum(len(v) for v in ray.files.values()) >= 3


@pytest.mark.parametrize("case", ["bad_magic", "truncated", "truncated_gz", "nan", "labels", "image_width"])
def test_bad_array_file_is_one_line_naming_it_and_nothing_is_published(tmp_path, ray_local, case):
    if case in ("bad_magic", "truncated", "truncated_gz"):
        directory, _ = make_idx_dir(tmp_path / "idx", n_train=600, n_test=100, gz=case == "truncated_gz")
        source = {"kind": "idx", "path": str(directory)}
        bad = next(directory.glob("train-images-idx3-ubyte*"))
        data = bad.read_bytes()
        if case == "bad_magic":
            bad.write_bytes(b"\x12\x34" + data[2:])
            message = r"train-images-idx3-ubyte: not an IDX file \(bad magic number\)"
        elif case == "truncated":
            bad.write_bytes(data[:-250])
            message = r"train-images-idx3-ubyte: IDX header says \(600, 10, 10\) but the file holds 59750 data bytes"
        else:  # a gzip stream cut short: found by the read task that decompresses it
            bad.write_bytes(gzip.compress(gzip.decompress(data)[:-250]))
            message = r"train-images-idx3-ubyte.gz: IDX header says \(600, 10, 10\) but the file ends at row 597"
    elif case == "image_width":  # one file's images are a value short: found in the batch that reads it
        (tmp_path / "src").mkdir()
        for i, width in enumerate((16, 15)):
            pq.write_table(pa.table({"image": list(np.ones((300, width))), "label": np.zeros(300, int)}),
                           tmp_path / "src" / f"part-{i}.parquet")
        source = {"kind": "image_table", "path": str(tmp_path / "src"), "image_shape": [1, 4, 4]}
        message = r"part-1.parquet: column 'image' must hold 16 values in every row"
    else:
        x = np.random.default_rng(2).normal(size=(700, 4, 4)).astype(np.float32)
        if case == "nan":
            x[437, 0, 2] = np.nan
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "y.npy", np.zeros(700 if case == "nan" else 699, np.int64))
        source = {"kind": "npy", "path": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")}
        message = r"x.npy: non-finite value \(nan\) at row 437, feature 2" if case == "nan" \
            else r"y.npy: expected 700 labels, got shape \(699,\)"
    with pytest.raises(DataError, match=message) as err:
        prepare_dataset(array_spec(source), tmp_path / "out", **quiet)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["idx"] if case.startswith(("bad", "trunc")) else
                                                          ["src"] if case == "image_width" else ["x.npy", "y.npy"])
