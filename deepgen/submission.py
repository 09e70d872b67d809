"""What a cluster job gets: the pipeline spec resolved for submission (overrides and --storage applied, every
local path absolute, registry inputs pinned, the run name fixed: NAME-SPECHASH, or NAME-SPECHASH-SLOT for a
schedule slot), staged beside the project's code as the job's working folder, with its runtime environment
and entrypoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deepgen.errors import DeepgenError
from deepgen.files import absolute
from deepgen.jobs_api import ClusterError

PACKAGE_DIR = Path(__file__).resolve().parent

PROJECT_ROOT = PACKAGE_DIR.parent

RUN_ENTRY = "jobs/run_pipeline.py"

RETRAIN_ENTRY = "jobs/retrain.py"

STAGED_SPECS = "deepgen-submit"          # folder of the resolved spec inside the uploaded working_dir

PROJECT_FILES = ("pyproject.toml", "constraints.txt")

UPLOAD_EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", ".venv", ".git", "deepgen-runs"]


def is_uri(path: str) -> bool:
    """`s3://bucket/x`, `gs://...` (not a local path; `file://` counts as local)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None and not path.startswith("file://")


def _local(path: str, base: Path) -> str:
    return str(absolute(path.removeprefix("file://"), base))


def storage_overrides(storage: str | None) -> list[str]:
    """`--storage S`: Ray Train state goes to S; a filesystem path also holds the runs folder (prepared
    data, the SQLite store when there is no tracking server), so a rerun anywhere finds both."""
    if not storage:
        return []
    quoted = json.dumps  # a JSON string is a YAML string: no path is read as a number, list or comment
    if is_uri(storage):
        return [f"tracking.storage_path={quoted(storage)}"]
    path = _local(storage, Path.cwd())
    return [f"tracking.storage_path={quoted(path)}", f"tracking.runs_dir={quoted(path)}"]


def load_spec(pipeline: str | os.PathLike, overrides: Sequence[str] = (), storage: str | None = None):
    """Validate a pipeline file with its `--set` overrides and `--storage` (a one-line SpecError if not)."""
    from deepgen.config import PipelineSpec

    return PipelineSpec.from_yaml(pipeline, overrides=[*(overrides or []), *storage_overrides(storage)])


def resolve_paths(spec):
    """The spec with every local path absolute (against the current folder): data source files and
    tokenizer (`DataSpec.with_absolute_paths`), `data.output`, a pretrained model folder, `tracking.runs_dir`
    and a local `tracking.storage_path`. A job starts in an uploaded, temporary working folder, so a
    relative path would point there (or at nothing). The run name is pinned first: it is the one `deepgen
    run` gives the same pipeline, whichever folder or checkout it is submitted from."""
    from deepgen.config import PipelineSpec

    base = Path.cwd()
    raw = spec.with_run_name(spec.run_name).model_dump(mode="json")
    raw["data"] = spec.data.with_absolute_paths().model_dump(mode="json")
    if raw["data"].get("output"):
        raw["data"]["output"] = _local(raw["data"]["output"], base)
    pretrained = raw["model"].get("pretrained")
    if pretrained and Path(pretrained).expanduser().exists():  # else a registry reference, NAME@ALIAS
        raw["model"]["pretrained"] = _local(pretrained, base)
    tr = raw["tracking"]
    tr["runs_dir"] = _local(tr["runs_dir"], base)
    if tr.get("storage_path") and not is_uri(tr["storage_path"]):
        tr["storage_path"] = _local(tr["storage_path"], base)
    return PipelineSpec.validate_dict(raw, source="<resolved spec>")


def missing_local_paths(spec) -> list[str]:
    src = spec.data.source
    paths = [getattr(src, "path", None), getattr(src, "labels", None), *(getattr(src, "paths", None) or [])]
    return [p for p in paths if p and not Path(p).exists()]


def slot_tag(slot: str) -> str:
    """`2026-11-27T03:00Z` -> `20261127T0300Z`: safe in run names, folder names and job ids."""
    from deepgen.cron import format_slot, parse_slot

    return format_slot(parse_slot(slot)).replace("-", "").replace(":", "")


def scheduled_run_name(spec, slot: str) -> str:
    """`NAME-SPECHASH-SLOT` (or `RUN_NAME-SLOT` when the spec names its run): one run per schedule slot."""
    return f"{spec.run_name}-{slot_tag(slot)}"


def scheduled_spec(pipeline, slot: str, overrides: Sequence[str] = (), storage: str | None = None):
    """The spec a retrain of `slot` runs: registry inputs resolved, then run NAME-SPECHASH-SLOT.

    A fine-tuning pipeline's `model.pretrained: NAME@ALIAS` becomes the version it points at now, as in
    `deepgen run`; the spec hash (so the run name) follows it, so the first slot after the encoder's
    champion moves fine-tunes the new encoder instead of finding the slot's old run done."""
    from deepgen import orchestrate

    spec = orchestrate.resolve_inputs(load_spec(pipeline, list(overrides), storage))
    return spec.with_run_name(scheduled_run_name(spec, slot))


def pin_pretrained(spec, tracking_uri: str | None, out):
    """`model.pretrained: NAME@ALIAS` -> `NAME/VERSION`, the version the alias points at now, when the
    registry can be reached from here. The run name (and so the submission id) then names the encoder
    version, so a resubmission after the alias moves is a new run rather than "already done"."""
    ref = getattr(spec.model, "pretrained", None)
    if not ref or "@" not in ref or Path(ref).expanduser().exists():
        return spec
    from deepgen import tracking

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    local_db = Path(spec.runs_dir) / "mlflow.db"
    try:
        if not uri and not local_db.is_file():
            raise DeepgenError(f"no --tracking-uri, MLFLOW_TRACKING_URI or {local_db}")
        tracking.configure_uri(uri or tracking.tracking_uri_for(spec.runs_dir))
        with tracking.quick_requests():  # an in-cluster server name does not resolve here: say so, go on
            version = tracking.resolve(ref)
    except DeepgenError as e:
        print(f"note: model.pretrained {ref} not resolved here ({e}); the cluster resolves it when the job "
              "starts, and a resubmission counts as the same run until the pipeline changes", file=out)
        return spec
    pinned = f"{version.name}/{version.version}"
    print(f"model.pretrained: {ref} is {pinned}; the job fine-tunes that version", file=out)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"pretrained": pinned})})


def stage(spec, dest: Path, name: str) -> str:
    """Copy the code the job needs into `dest` and write the resolved spec; returns the spec's path there."""
    jobs = PROJECT_ROOT / "jobs"
    if not (jobs / "run_pipeline.py").is_file():
        raise ClusterError(f"{jobs}: no job entrypoints; `deepgen submit` runs from a checkout of deepgen "
                           "(pip install -e .)")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PACKAGE_DIR, dest / "deepgen", ignore=ignore)
    shutil.copytree(jobs, dest / "jobs", ignore=ignore)
    for f in PROJECT_FILES:
        if (PROJECT_ROOT / f).is_file():
            shutil.copy2(PROJECT_ROOT / f, dest / f)
    rel = f"{STAGED_SPECS}/{name}.yaml"
    (dest / STAGED_SPECS).mkdir()
    header = f"# {spec.name}: resolved by `deepgen submit` (overrides applied, paths absolute); spec hash " \
             f"{spec.spec_hash()}\n"
    (dest / rel).write_text(header + yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return rel


def pip_requirements() -> list[str]:
    """The project's runtime requirements, pinned to `constraints.txt` where it names them; Ray itself is
    left out (the job must use the cluster's Ray)."""
    import tomllib

    from packaging.requirements import Requirement

    pyproject = PROJECT_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        raise ClusterError(f"{pyproject}: not found; --pip needs a checkout of deepgen")
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    constraints = PROJECT_ROOT / "constraints.txt"
    if constraints.is_file():
        for line in constraints.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    out = []
    for dep in deps:
        req = Requirement(dep)
        if _norm(req.name) == "ray":
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        pin = pins.get(_norm(req.name))
        out.append(f"{req.name}{extras}=={pin}" if pin else str(req))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def runtime_env(working_dir: Path, tracking_uri: str | None = None, pip: bool = False,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    from deepgen.tracking import GIT_COMMIT_ENV, git_commit

    env_vars = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(env or {})}
    if (commit := git_commit()) != "unknown":  # the staged code has no .git: its models are tagged with it
        env_vars[GIT_COMMIT_ENV] = commit
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    # a tracking server with basic auth (infra/mlflow/mlflow.yaml): the submitter's user reaches the job.
    # The job's runtime env is visible to whoever reaches the job API (token auth guards it).
    env_vars |= {k: os.environ[k] for k in MLFLOW_CREDENTIALS if os.environ.get(k)}
    renv: dict[str, Any] = {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}
    if pip:
        renv["pip"] = {"packages": pip_requirements(), "pip_check": False}
    return renv


def entrypoint(spec_path: str, slot: str | None) -> str:
    if slot:
        return shlex.join(["python", RETRAIN_ENTRY, spec_path, "--slot", slot])
    return shlex.join(["python", RUN_ENTRY, spec_path])
