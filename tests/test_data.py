import gzip
import shutil
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import bar_images, race

from deepgen.config import AnomalySpec, DataSpec
from deepgen.data.dataset import check_normal_rows, load_split, normal_mask
from deepgen.data.manifest import read_manifest
from deepgen.data.prepare import prepare_dataset
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


def test_damaged_idx_headers_are_one_line_data_errors(tmp_path):
    header = bytes([0, 0, 0x08, 3])
    cases = {"short": header + struct.pack(">2i", 2, 3),  # three sizes announced, two given
             "negative": header + struct.pack(">3i", -2, -3, 4) + bytes(24),
             "long": header + struct.pack(">3i", 2, 3, 4) + bytes(25)}
    messages = {"short": r"short: truncated IDX file \(12 bytes, the header alone needs 16\)",
                "negative": r"negative: IDX header has a negative size \(-2, -3, 4\)",
                "long": r"long: IDX header says \(2, 3, 4\) but the file holds 25 data bytes"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=messages[name]):
            read_idx_file(tmp_path / name)


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


def test_label_type_is_recorded_truly_and_whole_valued_floats_are_class_ids(tmp_path):
    """A conditional GAN takes only labels recorded as "int"; a CSV's 0.0 / 1.0 are still class ids."""
    rng = np.random.default_rng(0)
    for name, labels, label_type, arrow_type in (("whole", np.arange(60) % 2 * 1.0, "int", "int64"),
                                                 ("half", np.arange(60) % 2 + 0.5, "float", "double"),
                                                 ("flag", np.arange(60) % 2 == 1, "bool", "bool")):
        pq.write_table(pa.table({"a": rng.normal(size=60), "label": labels}), tmp_path / f"{name}.parquet")
        spec = data_spec({"kind": "table", "path": str(tmp_path / f"{name}.parquet"), "label_column": "label"})
        manifest, _ = prepare_dataset(spec, tmp_path / name, log=lambda m: None)
        assert (manifest.label_type, manifest.arrow_schema["label"]) == (label_type, arrow_type)
        _, y = load_split(tmp_path / name, "train")
        assert (normal_mask(y, AnomalySpec(anomalous_labels=[1]), len(y)) == (y != 1)).all()
    # a copy prepared when bool labels were recorded as "int" is stale, though its fingerprint matches
    old = manifest.model_copy(update={"label_type": "int"})
    (tmp_path / "flag" / "manifest.json").write_text(old.model_dump_json())
    _, wrote = prepare_dataset(spec, tmp_path / "flag", log=lambda m: None)
    assert wrote and read_manifest(tmp_path / "flag").label_type == "bool"


def test_nan_or_infinite_labels_are_refused_with_their_count(tmp_path):
    y = np.arange(50) % 2 * 1.0
    y[[3, 9]] = np.nan, np.inf
    pq.write_table(pa.table({"a": np.ones(50), "kind": y}), tmp_path / "t.parquet")
    np.save(tmp_path / "x.npy", np.ones((50, 4), np.float32))
    np.save(tmp_path / "y.npy", y)
    for source, message in (
            ({"kind": "table", "path": str(tmp_path / "t.parquet"), "label_column": "kind"},
             r"t.parquet: column 'kind' has 2 NaN or infinite labels; fix or drop those rows"),
            ({"kind": "npy", "path": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")},
             r"y.npy has 2 NaN or infinite labels")):
        with pytest.raises(DataError, match=message):
            prepare_dataset(data_spec(source), tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


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


def test_missing_or_nan_mask_values_are_refused_not_read_as_foreground(tmp_path):
    for name, bad, message in (("null", None, r"null.parquet: column 'mask' has 1 missing values inside its lists"),
                               ("nan", float("nan"), r"nan.parquet: column 'mask' has 1 NaN or infinite values")):
        masks = [[0.0] * 16 for _ in range(30)]
        masks[4][5] = bad
        pq.write_table(pa.table({"image": [list(range(16))] * 30, "mask": masks}), tmp_path / f"{name}.parquet")
        spec = data_spec({"kind": "image_masks", "path": str(tmp_path / f"{name}.parquet"), "image_shape": [1, 4, 4]})
        with pytest.raises(DataError, match=message):
            prepare_dataset(spec, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


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


def test_a_concurrent_prepare_of_the_same_data_is_accepted_and_of_other_data_refused(tmp_path, monkeypatch):
    spec, quiet = data_spec({"kind": "digits"}), lambda m: None
    race(monkeypatch, tmp_path / "d", lambda: prepare_dataset(spec, tmp_path / "d", log=quiet))
    manifest, wrote = prepare_dataset(spec, tmp_path / "d", log=quiet)
    assert wrote and read_manifest(tmp_path / "d").fingerprint == manifest.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # this copy dropped: theirs holds the same data

    shutil.rmtree(tmp_path / "d")
    race(monkeypatch, tmp_path / "d", lambda: prepare_dataset(data_spec({"kind": "digits"}, seed=1), tmp_path / "d",
                                                              log=quiet))
    with pytest.raises(DataError, match=r"d: another process wrote this dataset at the same time; run again"):
        prepare_dataset(spec, tmp_path / "d", log=quiet)
    assert read_manifest(tmp_path / "d").fingerprint != manifest.fingerprint  # theirs is kept whole
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    # a stale copy was there (moved aside by this prepare before the collision): it goes too
    prepare_dataset(data_spec({"kind": "digits"}, seed=2), tmp_path / "d", log=quiet)
    race(monkeypatch, tmp_path / "d", lambda: prepare_dataset(data_spec({"kind": "digits"}, seed=1), tmp_path / "d",
                                                              log=quiet))
    with pytest.raises(DataError, match=r"another process wrote this dataset at the same time"):
        prepare_dataset(spec, tmp_path / "d", log=quiet)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_a_split_deleted_by_hand_is_prepared_again(tmp_path):
    spec, quiet = data_spec({"kind": "digits"}), lambda m: None
    prepare_dataset(spec, tmp_path / "d", log=quiet)
    (tmp_path / "d" / "val.parquet").unlink()
    _, wrote = prepare_dataset(spec, tmp_path / "d", log=quiet)
    assert wrote and (tmp_path / "d" / "val.parquet").is_file()


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


def test_loss_auto_is_bce_for_binary_inputs_and_mse_for_grey_levels(tmp_path):
    """`loss: auto` follows the data, decided at prepare time: a binarised image set gets sigmoid + BCE,
    grey levels (and tables) the squared error; an explicit loss stays."""
    from deepgen.config import PipelineSpec
    from deepgen.tasks import build_task

    x, y = bar_images(200, seed=3)
    np.save(tmp_path / "grey.npy", x)
    np.save(tmp_path / "binary.npy", (x > 127).astype(np.uint8) * 255)
    np.save(tmp_path / "y.npy", y)
    resolved = {}
    for name in ("grey", "binary"):
        for loss in ("auto", "bce", "mse"):
            spec = PipelineSpec.validate_dict({
                "name": f"{name}-{loss}", "registry": {"model_name": "m"},
                "data": {"source": {"kind": "npy", "path": str(tmp_path / f"{name}.npy"),
                                    "labels": str(tmp_path / "y.npy")}},
                "model": {"kind": "dense_autoencoder", "loss": loss},
                "tracking": {"runs_dir": str(tmp_path / "runs")}})
            manifest, _ = prepare_dataset(spec.data, tmp_path / name, log=lambda m: None)
            resolved[name, loss] = build_task(spec, manifest).config.loss
        assert read_manifest(tmp_path / name).binary_features == (name == "binary")
    assert resolved == {("grey", "auto"): "mse", ("grey", "bce"): "bce", ("grey", "mse"): "mse",
                        ("binary", "auto"): "bce", ("binary", "bce"): "bce", ("binary", "mse"): "mse"}


def test_score_auto_is_the_smoothed_error_for_images_and_for_tables_the_vae_elbo_or_combined():
    """What benchmarks/anomaly.py chose on validation splits; an explicit score stays."""
    from deepgen.config import resolve_input_range, resolve_score

    assert resolve_score("auto", [1, 28, 28]) == "smoothed" and resolve_score("auto", [30]) == "combined"
    assert resolve_score("auto", [30], "vae") == "reconstruction"  # the VAE's own -ELBO
    assert resolve_score("auto", [1, 28, 28], "vae") == "smoothed"
    assert resolve_score("latent", [1, 28, 28]) == "latent" and resolve_score("latent", [30], "vae") == "latent"
    assert resolve_input_range("auto", [30]) == "normal" and resolve_input_range("auto", [1, 8, 8]) == "prepared"
    assert resolve_input_range("prepared", [30]) == "prepared"


def test_a_table_autoencoder_sees_the_normal_training_rows_range_and_carries_it(tmp_path):
    """input_range auto on a table: the model maps the normal training rows' min-max range of each feature
    to [0, 1] (anomalous training rows do not widen it), keeps it through a checkpoint's state dict, and a
    value beyond it is rebuilt with a larger error than the same row inside it."""
    import pandas as pd
    import torch

    from deepgen.config import PipelineSpec
    from deepgen.data.dataset import load_split
    from deepgen.tasks import build_task

    rng = np.random.default_rng(0)
    normal = rng.uniform(0, 1, size=(300, 3))
    anomalies = rng.uniform(5, 6, size=(60, 3))  # far beyond every normal value
    table = pd.DataFrame(np.vstack([normal, anomalies]), columns=["a", "b", "c"])
    table["label"] = ["ok"] * 300 + ["bad"] * 60
    table.to_csv(tmp_path / "t.csv", index=False)
    runs = str(tmp_path / "runs")
    spec = PipelineSpec.model_validate({
        "name": "t", "data": {"source": {"kind": "table", "path": str(tmp_path / "t.csv"), "label_column": "label"}},
        "model": {"kind": "vae", "hidden": [8], "latent_dim": 2}, "anomaly": {"normal_labels": ["ok"]},
        "registry": {"model_name": "t"}, "tracking": {"runs_dir": runs}})
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    assert (task.input_range, task.score) == ("normal", "reconstruction")
    model = task.build_models()["model"]
    x, y = load_split(spec.data_dir, "train")
    seen = model.normalize(torch.from_numpy(x[y == "ok"]))
    assert seen.min().item() == pytest.approx(0, abs=1e-6) and seen.max().item() == pytest.approx(1, abs=1e-6)
    assert model.normalize(torch.from_numpy(x[y == "bad"])).min() > 1  # outside what normal rows span

    fresh = build_task(spec, manifest)  # a model restored from a checkpoint keeps the range it trained with
    restored = type(model)(model.config)
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.input_low, model.input_low) and torch.equal(restored.input_span, model.input_span)
    assert fresh.input_range == "normal"

    # a state dict from before the input range (no buffers) loads as the identity
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(("input_low", "input_span"))}
    restored.load_state_dict(old)
    assert restored.input_low.item() == 0 and restored.input_span.item() == 1

    prepared = PipelineSpec.model_validate(spec.model_dump() | {"anomaly": {"normal_labels": ["ok"],
                                                                           "input_range": "prepared"}})
    model_p = build_task(prepared, manifest).build_models()["model"]
    assert model_p.input_low.item() == 0 and model_p.input_span.item() == 1  # the prepared scale, unchanged


@pytest.mark.parametrize("files", [1, 3])
def test_take_rows_reads_the_asked_rows_in_the_asked_order_chunk_by_chunk(tmp_path, files):
    """What a GAN's evaluation samples instead of loading whole splits: the rows load_split would give at
    those positions, across part files (Ray Data's split folders) and chunk boundaries."""
    from deepgen.data.dataset import fixed_size_list, split_rows, take_rows

    rng = np.random.default_rng(0)
    x, y = rng.random((50, 4), dtype=np.float32), rng.integers(0, 5, 50)
    folder = tmp_path / "train.parquet"
    if files == 1:
        pq.write_table(pa.table({"features": fixed_size_list(x), "label": y}), folder, row_group_size=7)
    else:
        folder.mkdir()
        for i, part in enumerate(np.array_split(np.arange(50), files)):
            pq.write_table(pa.table({"features": fixed_size_list(x[part]), "label": y[part]}),
                           folder / f"part-{i:03d}.parquet", row_group_size=7)
    whole_x, whole_y = load_split(tmp_path, "train")
    np.testing.assert_array_equal(whole_x, x)  # the file order is the row order
    rows = rng.permutation(split_rows(tmp_path, "train"))[:20]
    got_x, got_y = take_rows(tmp_path, "train", rows)
    np.testing.assert_array_equal(got_x, x[rows])
    np.testing.assert_array_equal(got_y, y[rows])
    with pytest.raises(IndexError, match="train.parquet"):
        take_rows(tmp_path, "train", np.array([3, 50]))
    from deepgen.data.dataset import sample_rows

    drawn = np.random.default_rng(5).permutation(50)
    got_x, got_y = sample_rows(tmp_path, "train", 60, np.random.default_rng(5))  # more than the split holds
    np.testing.assert_array_equal(got_x, x[drawn])
    np.testing.assert_array_equal(got_y, y[drawn])
