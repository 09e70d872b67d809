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
                                     ["models", "show"], ["models", "history"], ["models", "promote"],
                                     ["models", "rollback"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: deepgen" in text
    if command[0] in ("prepare", "train", "run"):
        assert "--set FIELD=VALUE" in text and "pipeline YAML file" in text
