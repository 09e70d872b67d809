"""`deepgen validate` prints the spec a run would use; `deepgen schema` is a JSON Schema every shipped pipeline
passes and a typo fails, so an editor can check pipeline files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepgen.config import PipelineSpec

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


def _deepgen(*args):
    return subprocess.run([sys.executable, "-m", "deepgen.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_validate_prints_the_effective_spec_with_overrides_and_defaults():
    out = _deepgen("validate", "pipelines/quickstart.yaml", "--set", "train.epochs=3")
    assert out.returncode == 0, out.stderr
    header, _, body = out.stdout.partition("\n")
    expected = PipelineSpec.from_yaml("pipelines/quickstart.yaml", overrides=["train.epochs=3"])
    assert header == f"# pipelines/quickstart.yaml: valid; run name {expected.run_name} " \
                     f"(spec hash {expected.spec_hash()})"
    printed = yaml.safe_load(body)
    assert printed["train"]["epochs"] == 3 and "grad_accum_steps" in printed["train"]  # a default filled in
    assert PipelineSpec.validate_dict(printed) == expected  # the printed spec is the one a run would use


def test_validate_json_is_one_object():
    out = _deepgen("validate", "pipelines/gan_dcgan.yaml", "--json")
    info = json.loads(out.stdout)
    assert out.returncode == 0 and info["spec"]["model"]["kind"] == "dcgan"
    assert info["run_name"] == PipelineSpec.from_yaml("pipelines/gan_dcgan.yaml").run_name


def test_validate_refuses_an_invalid_pipeline_in_one_line_with_status_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "pipelines/quickstart.yaml").read_text().replace("latent_dim:", "latnet_dim:"))
    out = _deepgen("validate", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"deepgen: error: {bad}: model") and "latnet_dim" in line


@pytest.fixture(scope="module")
def schema():
    out = _deepgen("schema")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_shipped_pipeline_passes_the_schema(schema, path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize("change", [
    lambda d: d["train"].update(epochz=3),  # a typo'd field
    lambda d: d["train"].update(epochs="many"),
    lambda d: d.pop("registry"),  # a required section
])
def test_the_schema_rejects_what_the_spec_rejects(schema, change):
    jsonschema = pytest.importorskip("jsonschema")
    doc = yaml.safe_load((ROOT / "pipelines/quickstart.yaml").read_text())
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)
    with pytest.raises(Exception):  # noqa: B017 - and pydantic agrees
        PipelineSpec.validate_dict(doc)
