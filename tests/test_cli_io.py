"""The registry-backed commands' file handling (score, predict, sample, upscale, models lookup), run in-process
against a real SQLite registry (no Ray): bad input is refused in one line naming the file, and a failed
command leaves no output, half-written or not.

Registering a version logs a pyfunc model, so the small untrained models are registered once per module.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from deepgen import orchestrate, tracking
from deepgen.anomaly import threshold_tags
from deepgen.cli import main
from deepgen.config import FprThreshold, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.tasks import Evaluation, build_task

MODELS = {  # name: (source, model, gate metric, data extras)
    "anom": ({"kind": "digits"}, {"kind": "dense_autoencoder", "hidden": [8], "latent_dim": 2}, "roc_auc", {}),
    "gan": ({"kind": "digits"}, {"kind": "gan", "nz": 4, "hidden": [8]}, "frechet_distance", {}),
    "sr": ({"kind": "digits"}, {"kind": "srgan", "scale": 2, "channels": 4, "num_blocks": 1, "ndf": 4,
                                "feature_width": 4}, "psnr", {"resize": 16}),
    "seg": ({"kind": "shapes", "num_images": 40, "size": 16}, {"kind": "unet", "base_channels": 4, "depth": 1},
            "dice", {}),
    "txt": ({"kind": "labelled_text", "path": "texts.csv"},
            {"kind": "bert_classifier", "hidden": 8, "layers": 1, "heads": 1, "intermediate": 8}, "f1",
            {"text": {"max_len": 8, "vocab_size": 50, "min_frequency": 1}}),
}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One SQLite registry with version 1 (champion) of each model in MODELS, untrained."""
    root = tmp_path_factory.mktemp("cli-io")
    pd.DataFrame({"text": [f"{w} day {i}" for i, w in enumerate(["good", "bad"] * 20)],
                  "label": ["pos", "neg"] * 20}).to_csv(root / "texts.csv", index=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure(root / "runs")
        for name, (source, model, metric, data) in MODELS.items():
            source = {**source, "path": str(root / source["path"])} if "path" in source else source
            spec = orchestrate.resolve_inputs(PipelineSpec.validate_dict({
                "name": name, "data": {"source": source, **data}, "model": model,
                "registry": {"model_name": name, "gate_metric": metric}, "tracking": {"runs_dir": str(root / "runs")},
                **({"anomaly": {"anomalous_labels": [9]}} if name == "anom" else {})}))
            manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
            task = build_task(spec, manifest)
            tags = threshold_tags(0.5, FprThreshold()) if name == "anom" else {}
            ev = Evaluation({metric: 0.5}, registry_tags=tags)
            orchestrate.register(spec, manifest, ev, task.build_models(), task, orchestrate.start_run(spec, manifest))
    torch.set_num_threads(threads)
    return root / "runs"


@pytest.fixture
def deepgen(runs_dir, monkeypatch, capsys):
    """`deepgen(*args)` -> (exit code, stdout, stderr lines) of the CLI run in-process against the registry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(*args: str) -> tuple[int, str, list[str]]:
        capsys.readouterr()
        code = main([*args, "--runs-dir", str(runs_dir)])
        out = capsys.readouterr()
        return code, out.out, out.err.strip().splitlines()

    return run


def _refused(result, where, *fragments: str, status: int = 2) -> None:
    """Exit `status` (2 a usage error, 1 unusable data or registry) with one line `deepgen: error: WHERE: ...`
    holding each fragment."""
    code, _, err = result
    assert code == status and len(err) == 1, (code, err)
    assert err[0].startswith(f"deepgen: error: {where}: "), err
    for fragment in fragments:
        assert fragment in err[0], err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _pngs(folder: Path, sizes: dict[str, int]) -> Path:
    folder.mkdir()
    for name, size in sizes.items():
        matplotlib.image.imsave(folder / f"{name}.png", np.random.default_rng(size).random((size, size)), cmap="gray")
    return folder


# --- score: bad input files --------------------------------------------------------------------------


def _object_npy(p):
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("name, write, fragment", [
    ("objects.npy", _object_npy, "cannot read the .npy array (Object arrays"),
    ("garbage.npy", lambda p: p.write_bytes(b"not numpy at all"), "not a .npy file"),
    ("scalar.npy", lambda p: np.save(p, np.float32(3)), "a single value, expected an array of rows"),
    ("words.npy", lambda p: np.save(p, np.array(["a", "b"])), "expected numbers"),
    ("torn.parquet", lambda p: p.write_bytes(b"PAR1garbagePAR1"), "cannot read Parquet file"),
    ("rows.bin", lambda p: p.write_bytes(b"\0" * 64), "give a .npy, .csv or .parquet file"),
    ("rows.npy", lambda p: p.mkdir(), "Is a directory"),  # an OSError, caught by main()
    ("empty.npy", lambda p: np.save(p, np.zeros((0, 64), np.float32)), "no rows (shape (0, 64))"),
    ("nothing.npy", lambda p: np.save(p, np.zeros((0,), np.float32)), "no rows (shape (0,))"),
])
def test_score_refuses_an_unreadable_input_in_one_line_naming_it(deepgen, tmp_path, name, write, fragment):
    write(tmp_path / name)
    result = deepgen("score", "--model", "anom@champion", "--input", str(tmp_path / name),
                     "--output", str(tmp_path / "scores.parquet"))
    _refused(result, tmp_path / name, fragment, status=1)  # unusable data: a failure at run time
    assert not (tmp_path / "scores.parquet").exists()


def test_score_refuses_to_write_over_its_input(deepgen, tmp_path):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((3, 64), np.float32))
    before = rows.read_bytes()
    _refused(deepgen("score", "--model", "anom@champion", "--input", str(rows), "--output", str(rows)), rows,
             "the output would replace the input")
    assert rows.read_bytes() == before


def test_score_names_an_output_folder_it_cannot_create(deepgen, tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((3, 64), np.float32))
    (tmp_path / "scores").write_text("a file, not a folder")
    out = tmp_path / "scores" / "s.parquet"
    _refused(deepgen("score", "--model", "anom@champion", "--input", str(tmp_path / "rows.npy"), "--output", str(out)),
             out, f"cannot create its folder {tmp_path / 'scores'}")
    assert _leftovers(tmp_path) == ["rows.npy", "scores"]


def _rows(tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((3, 64), np.float32))
    return str(tmp_path / "rows.npy")


@pytest.mark.parametrize("command", [
    lambda rows, out: ("score", "--model", "anom@champion", "--input", rows, "--output", out),
    lambda rows, out: ("sample", "--model", "gan@champion", "--n", "2", "--out", out),
    lambda rows, out: ("predict", "--model", "txt@champion", "--text", "good day", "--output", out)],
    ids=["score", "sample", "predict"])
def test_an_output_is_a_new_file_or_a_regular_file_given_with_force(deepgen, tmp_path, command):
    """`deepgen score --output /dev/full` run as root replaced the device node with a Parquet file."""
    rows, suffix = _rows(tmp_path), ".png" if command("", "")[0] == "sample" else ".parquet"
    target = tmp_path / f"target{suffix}"
    target.write_bytes(b"kept")
    (tmp_path / f"link{suffix}").symlink_to(target)
    os.mkfifo(tmp_path / f"pipe{suffix}")
    (tmp_path / f"folder{suffix}").mkdir()
    refused = [(f"pipe{suffix}", "is not a regular file"), (f"link{suffix}", "is a symbolic link"),
               (f"folder{suffix}", "is a folder")]
    score = command("", "")[0] == "score"  # the others refuse /dev/null for its suffix first
    for name, fragment in [*refused, ("/dev/null", "is not a regular file")] if score else refused:
        out = tmp_path / name  # /dev/null as is: an absolute path
        _refused(deepgen(*command(rows, str(out))), out, fragment)
        _refused(deepgen(*command(rows, str(out)), "--force"), out, fragment)  # not even with --force
    _refused(deepgen(*command(rows, str(target))), target, "already exists; add --force")
    assert target.read_bytes() == b"kept" and (tmp_path / f"link{suffix}").is_symlink()
    assert sorted(_leftovers(tmp_path)) == sorted(["rows.npy", f"target{suffix}", f"link{suffix}", f"pipe{suffix}",
                                                   f"folder{suffix}"])
    assert deepgen(*command(rows, str(target)), "--force")[0] == 0 and target.read_bytes() != b"kept"
    assert deepgen(*command(rows, str(tmp_path / f"new{suffix}")))[0] == 0


# --- upscale -----------------------------------------------------------------------------------------


def test_upscale_names_a_damaged_png_and_creates_no_output(deepgen, tmp_path):
    src = _pngs(tmp_path / "small", {"a": 8})
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    _refused(deepgen("upscale", "--model", "sr@champion", "--input", str(src), "--output", str(tmp_path / "big")),
             src / "b.png", "not a readable PNG image", status=1)
    assert _leftovers(tmp_path) == ["small"]


@pytest.mark.parametrize("output", ["big", "big.npy"])
def test_upscale_of_an_empty_npy_is_refused_before_anything_is_written(deepgen, tmp_path, output):
    np.save(tmp_path / "none.npy", np.zeros((0,), np.float32))
    _refused(deepgen("upscale", "--model", "sr@champion", "--input", str(tmp_path / "none.npy"),
                     "--output", str(tmp_path / output)), tmp_path / "none.npy", "expected images (N, h, w)",
             status=1)
    assert _leftovers(tmp_path) == ["none.npy"]


def test_upscale_keeps_the_files_of_its_input_folder_and_of_a_full_output_folder(deepgen, tmp_path):
    src = _pngs(tmp_path / "small", {"a": 8, "b": 8})
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    _refused(deepgen("upscale", "--model", "sr@champion", "--input", str(src), "--output", str(src)), src,
             "the output would replace the input")
    full = _pngs(tmp_path / "full", {"a": 4})
    _refused(deepgen("upscale", "--model", "sr@champion", "--input", str(src), "--output", str(full)), full,
             "the folder is not empty")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert _leftovers(full) == ["a.png"] and matplotlib.image.imread(full / "a.png").shape[:2] == (4, 4)


@pytest.mark.parametrize("output", ["big", "big.npy"])
def test_an_upscale_that_fails_while_writing_leaves_no_output(deepgen, tmp_path, output):
    """Files may grow to 256 KB here: a and b upscale to small PNGs, c (or the .npy of all three) does not fit."""
    src = _pngs(tmp_path / "small", {"a": 400, "b": 400, "c": 400} if output.endswith(".npy")
                else {"a": 8, "b": 8, "c": 400})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # Python ignores SIGXFSZ: writes fail EFBIG
    try:
        result = deepgen("upscale", "--model", "sr@champion", "--input", str(src), "--output", str(tmp_path / output))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    _refused(result, tmp_path / output, "cannot write it: ", status=1)  # File too large, or numpy's bytes written
    assert _leftovers(tmp_path) == ["small"]  # no output, no hidden temporary
    assert deepgen("upscale", "--model", "sr@champion", "--input", str(src),
                   "--output", str(tmp_path / "new" / output))[0] == 0  # without the limit, it is written
    assert _leftovers(tmp_path / "new") == [output]


# --- sample ------------------------------------------------------------------------------------------


def test_sample_refuses_an_image_format_it_cannot_write_before_drawing(deepgen, tmp_path):
    _refused(deepgen("sample", "--model", "gan@champion", "--out", str(tmp_path / "grid.xyz")),
             tmp_path / "grid.xyz", "give a .png file")
    assert _leftovers(tmp_path) == []


# --- predict -----------------------------------------------------------------------------------------


def test_predict_refuses_a_text_input_that_is_not_utf8(deepgen, tmp_path):
    (tmp_path / "texts.txt").write_bytes(bytes(range(256)))
    _refused(deepgen("predict", "--model", "txt@champion", "--input", str(tmp_path / "texts.txt")),
             tmp_path / "texts.txt", "not UTF-8 text", status=1)


def test_predict_writes_labels_into_a_new_folder_and_refuses_a_non_parquet_output(deepgen, tmp_path):
    out = tmp_path / "new" / "labels.parquet"
    code, stdout, err = deepgen("predict", "--model", "txt@champion", "--text", "good day", "--output", str(out))
    assert code == 0, err
    assert pd.read_parquet(out)["text"].tolist() == ["good day"] and _leftovers(out.parent) == ["labels.parquet"]
    _refused(deepgen("predict", "--model", "txt@champion", "--text", "good day", "--output",
                     str(tmp_path / "labels.csv")), tmp_path / "labels.csv", "give --output FILE.parquet")
    assert _leftovers(tmp_path) == ["new"]


def test_predict_masks_refuses_a_png_folder_that_already_holds_files(deepgen, tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((2, 16, 16), np.float32))
    full = _pngs(tmp_path / "masks", {"mask_00000": 4})
    _refused(deepgen("predict", "--model", "seg@champion", "--input", str(tmp_path / "images.npy"),
                     "--output", str(full)), full, "the folder is not empty")
    assert _leftovers(full) == ["mask_00000.png"]


@pytest.mark.parametrize("name", ["anom", "gan"])
def test_predict_with_a_model_that_neither_labels_nor_segments_says_which_command_it_takes(deepgen, tmp_path, name):
    np.save(tmp_path / "images.npy", np.zeros((2, 8, 8), np.float32))
    code, stdout, err = deepgen("predict", "--model", f"{name}@champion", "--input", str(tmp_path / "images.npy"))
    assert code == 2 and stdout == "" and len(err) == 1  # a usage error, like any other wrong flag
    assert err[0].startswith(f"deepgen: error: {name}@champion: a ") and "has no `deepgen predict`" in err[0]
    assert "deepgen score" in err[0] and "deepgen sample" in err[0]


def test_predict_writes_one_mask_per_image_as_npy_parquet_or_pngs(deepgen, tmp_path):
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((3, 16, 16), np.float32))
    for out in (tmp_path / "masks.npy", tmp_path / "masks.parquet", tmp_path / "pngs"):
        code, stdout, err = deepgen("predict", "--model", "seg@champion", "--input", str(tmp_path / "images.npy"),
                                    "--output", str(out))
        assert code == 0, err
        assert "predicted 3 masks" in stdout
    masks = np.load(tmp_path / "masks.npy")
    assert masks.shape == (3, 16, 16) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    assert [np.array(m).reshape(16, 16).tolist() for m in pd.read_parquet(tmp_path / "masks.parquet")["mask"]] \
        == masks.tolist()
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [f"mask_{i:05d}.png" for i in range(3)]


# --- models lookup -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["anom@champion", "anom/1", "anom"])
def test_models_lookup_prints_the_version_and_its_uri_on_one_line(deepgen, ref):
    code, out, err = deepgen("models", "lookup", ref)
    assert code == 0, err
    assert out == "anom/1\tmodels:/anom/1\n"
    code, out, _ = deepgen("models", "lookup", ref, "--json")
    assert json.loads(out) == {"name": "anom", "version": "1", "ref": "anom/1", "uri": "models:/anom/1"}


@pytest.mark.parametrize("ref", ["anom@nope", "anom/9", "nope@champion"])
def test_models_lookup_of_an_unknown_reference_exits_1_in_one_line(deepgen, ref):
    result = deepgen("models", "lookup", ref)
    _refused(result, ref, "`deepgen models list` shows what is there", status=1)
    assert result[1] == ""


# --- --json: one object on stdout ------------------------------------------------------------------------


def test_score_and_sample_json_is_one_object_naming_the_version_and_the_output(deepgen, tmp_path):
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).integers(0, 17, (7, 64)).astype(np.float32))
    code, out, err = deepgen("score", "--model", "anom@champion", "--input", str(tmp_path / "rows.npy"),
                             "--output", str(tmp_path / "s.parquet"), "--json")
    info = json.loads(out)  # all of stdout
    assert code == 0 and info["model"] == "anom" and info["version"] == "1" and info["rows"] == 7
    assert info["output"] == str(tmp_path / "s.parquet") and info["threshold"] == 0.5
    assert info["flagged"] == int(pd.read_parquet(tmp_path / "s.parquet")["is_anomaly"].sum())
    code, out, _ = deepgen("sample", "--model", "gan@champion", "--n", "4", "--out", str(tmp_path / "g.png"), "--json")
    assert code == 0 and json.loads(out) == {"model": "gan", "version": "1", "images": 4, "label": None, "seed": 0,
                                             "output": str(tmp_path / "g.png")}
    code, out, err = deepgen("sample", "--model", "gan@champion", "--out", str(tmp_path / "g.png"), "--json")
    assert code == 2 and json.loads(out)["exit_status"] == 2 and "already exists" in json.loads(out)["error"]
    assert err == [f"deepgen: error: {json.loads(out)['error']}"]
