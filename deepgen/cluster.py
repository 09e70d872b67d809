"""Running pipelines on a Ray cluster: `deepgen submit`, `deepgen jobs ...`, `deepgen schedule`, and the
scheduled-retrain entry (`jobs/retrain.py`).

`deepgen submit` validates the pipeline here, resolves what must not depend on the job's working folder
(relative data paths, the runs folder, the Ray storage path) to absolute paths, writes the resolved spec
into a small staging folder next to a copy of the code (`deepgen/`, `jobs/`, `pyproject.toml`,
`constraints.txt`; never `.venv`, `deepgen-runs`, `.git` or data) and submits that folder as the job's
`working_dir` through `JobSubmissionClient`. The cluster therefore runs exactly the spec that was validated.

Idempotency has two layers:

- the submission id is `deepgen-RUN_NAME`, where the run name is `NAME-SPECHASH` (or `train.run_name`) and,
  for a scheduled run, `NAME-SPECHASH-SLOT`. A job with that id that is PENDING, RUNNING or SUCCEEDED is
  reported and nothing is submitted; a FAILED or STOPPED one gets a retry `ID-retryN` (N = 1, 2, ...),
  which resumes the Ray Train run by its name from the last checkpoint in `tracking.storage_path`;
- the pipeline itself: the MLflow run is found again by run name, and a run name that registered a
  version registers nothing new (`orchestrate.run_pipeline`), so even a job resubmitted to a fresh cluster
  (which has forgotten its job ids) trains and registers at most once per run name.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from deepgen.errors import DeepgenError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
RUN_ENTRY = "jobs/run_pipeline.py"
RETRAIN_ENTRY = "jobs/retrain.py"
STAGED_SPECS = "deepgen-submit"          # folder of the resolved spec inside the uploaded working_dir
PROJECT_FILES = ("pyproject.toml", "constraints.txt")
UPLOAD_EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", ".venv", ".git", "deepgen-runs"]

ACTIVE = ("PENDING", "RUNNING")
DONE = ("SUCCEEDED",)
RETRYABLE = ("FAILED", "STOPPED")
MAX_ATTEMPTS = 100


class ClusterError(DeepgenError):
    """The Ray cluster cannot be reached, refused a request, or a job did not succeed."""

    exit_status = 1


# --- specs: load, storage, absolute paths, run names -------------------------------------------------


def is_uri(path: str) -> bool:
    """`s3://bucket/x`, `gs://...` (not a local path; `file://` counts as local)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None and not path.startswith("file://")


def _local(path: str, base: Path) -> str:
    path = path.removeprefix("file://")
    return str((base / Path(path).expanduser()).resolve()) if not Path(path).expanduser().is_absolute() \
        else str(Path(path).expanduser())


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
    raw = spec.model_dump(mode="json")
    raw["train"]["run_name"] = spec.run_name
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
    from deepgen.schedule import format_slot, parse_slot

    return format_slot(parse_slot(slot)).replace("-", "").replace(":", "")


def scheduled_run_name(spec, slot: str) -> str:
    """`NAME-SPECHASH-SLOT` (or `RUN_NAME-SLOT` when the spec names its run): one run per schedule slot."""
    return f"{spec.run_name}-{slot_tag(slot)}"


def with_run_name(spec, run_name: str):
    return spec.model_copy(update={"train": spec.train.model_copy(update={"run_name": run_name})})


def submission_id(run_name: str, attempt: int = 0) -> str:
    """`deepgen-RUN_NAME`, then `deepgen-RUN_NAME-retry1`, `-retry2`, ... for retries of a failed job."""
    base = "deepgen-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-")
    return base if attempt == 0 else f"{base}-retry{attempt}"


# --- the job API ---------------------------------------------------------------------------------


def default_address() -> str | None:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")


def connect(address: str | None):
    """A JobSubmissionClient for the Ray job API at `address` (http://HOST:8265)."""
    if not address:
        raise ClusterError("no Ray address: pass --address http://HOST:8265 (the dashboard / job API port) "
                           "or set RAY_API_SERVER_ADDRESS")
    if not re.match(r"^https?://", address):  # else the client dials it as a GCS address and hangs
        raise ClusterError(f"Ray address {address!r}: the job API is an http:// URL, e.g. http://HOST:8265 "
                           "(the dashboard port), not the cluster's HOST:6379")
    import logging

    logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
    from ray.job_submission import JobSubmissionClient

    from deepgen.ray_access import is_auth_error, token_refusal, use_token_if_present

    use_token_if_present()  # a token-auth cluster gets the token of ~/.ray/auth_token (or RAY_AUTH_TOKEN[_PATH])
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - unreachable (requests errors are OSErrors), 401/403, bad URL: one line
        if is_auth_error(e, http=True):
            raise token_refusal(address) from None
        raise ClusterError(f"cannot reach the Ray job API at {address}: {_why(e)}") from None


def _why(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if "401" in text or "403" in text or "nauthorized" in text or "orbidden" in text:
        return (f"{text[:200]} (the cluster uses Ray token auth: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, "
                "or keep the token in ~/.ray/auth_token)")
    return text[:300]


def job_info(client, job_id: str):
    """The job's JobDetails, or None if the cluster has no job with that id."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            return None
        raise ClusterError(f"job {job_id}: {_why(e)}") from None


def _status(info) -> str:
    return str(getattr(info.status, "value", info.status))


def plan_submission(client, run_name: str) -> tuple[str, str, Any]:
    """What to do for a run: ("submit", id, None), ("retry", id, failed JobDetails) or ("exists", id, JobDetails).

    Walks `deepgen-RUN`, `deepgen-RUN-retry1`, ... to the last id the cluster knows."""
    last = None
    for attempt in range(MAX_ATTEMPTS):
        info = job_info(client, submission_id(run_name, attempt))
        if info is None:
            if last is None:
                return "submit", submission_id(run_name, 0), None
            return "retry", submission_id(run_name, attempt), last
        if _status(info) not in RETRYABLE:
            return "exists", submission_id(run_name, attempt), info
        last = info
    raise ClusterError(f"{run_name}: {MAX_ATTEMPTS} failed attempts on this cluster; "
                       f"see `deepgen jobs logs {submission_id(run_name, MAX_ATTEMPTS - 1)}`")


# --- what the job gets --------------------------------------------------------------------------


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


# --- submit --------------------------------------------------------------------------------------


def submit(pipeline: str, address: str | None, overrides: Sequence[str] = (), tracking_uri: str | None = None,
           storage: str | None = None, slot: str | None = None, wait: bool = False, pip: bool = False,
           out=None, outcome: dict | None = None) -> int:
    """Submit (or find, or retry) the run's job; `outcome` receives what happened, for --json."""
    from deepgen.schedule import format_slot, parse_slot

    out = out or sys.stdout
    spec = load_spec(pipeline, overrides, storage)  # one-line SpecError before any network
    spec = resolve_paths(pin_pretrained(spec, tracking_uri, out))  # the pinned encoder is in the run name
    if slot:
        slot = format_slot(parse_slot(slot))
        run_name = scheduled_run_name(spec, slot)
    else:
        run_name = spec.run_name
    for path in missing_local_paths(spec):
        print(f"note: {path} is not on this machine; the cluster must see it at that path", file=out)
    if is_uri(spec.storage_path):
        print(f"note: checkpoints go to {spec.storage_path}, prepared data to {spec.runs_dir}: with more than "
              "one node, that folder must be on a filesystem every node mounts", file=out)
    if not tracking_uri:
        print("note: no --tracking-uri; the job logs to the cluster's MLFLOW_TRACKING_URI, else to SQLite in "
              f"{spec.runs_dir}", file=out)
    client = connect(address)
    action, job_id, info = plan_submission(client, run_name)
    if outcome is not None:
        outcome.update(submission_id=job_id, run_name=run_name, address=address,
                       action="submitted" if action == "submit" else action)
    if action == "exists":
        status = _status(info)
        if outcome is not None:
            outcome["status"] = status
        print(f"{job_id}: already {status} (run {run_name}); nothing submitted", file=out, flush=True)
        if wait and status in ACTIVE:
            return follow(client, job_id, address, out=out)
        return 0
    if action == "retry":
        print(f"{submission_id(run_name, 0)}: the last attempt {_status(info)}; retrying as {job_id} "
              f"(resumes run {run_name} from its last checkpoint)", file=out, flush=True)
    metadata = {"deepgen.pipeline": str(pipeline), "deepgen.name": spec.name, "deepgen.run_name": run_name,
                "deepgen.spec_hash": spec.spec_hash(), "deepgen.slot": slot or "",
                "deepgen.model": spec.registry.model_name}
    with tempfile.TemporaryDirectory(prefix="deepgen-submit-") as tmp:
        # the run name goes into the shipped spec, so the cluster cannot derive another one
        rel = stage(with_run_name(spec, spec.run_name), Path(tmp), spec.name)
        renv = runtime_env(Path(tmp), tracking_uri=tracking_uri, pip=pip)
        try:
            client.submit_job(entrypoint=entrypoint(rel, slot), submission_id=job_id, runtime_env=renv,
                              metadata=metadata)
        except RuntimeError as e:
            if "already" in str(e).lower():  # a concurrent submission of the same run won the race
                print(f"{job_id}: already submitted (run {run_name}); nothing submitted", file=out, flush=True)
                return follow(client, job_id, address, out=out) if wait else 0
            raise ClusterError(f"submitting {job_id}: {_why(e)}") from None
    print(f"submitted {job_id} (run {run_name}) to {address}", file=out, flush=True)
    print(f"  watch: deepgen jobs logs {job_id} --address {address} --follow", file=out, flush=True)
    return follow(client, job_id, address, out=out) if wait else 0


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


def follow(client, job_id: str, address: str | None, out=None, poll_s: float = 2.0) -> int:
    """Stream the job's logs until it ends; 0 if it SUCCEEDED, else a ClusterError naming its status."""
    import asyncio

    out = out or sys.stdout
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", file=out, flush=True)

    try:
        try:
            asyncio.run(tail())
        except Exception:  # noqa: BLE001, S110 - streaming logs is a convenience; the status is polled below
            pass
        while _status(info := client.get_job_info(job_id)) in ACTIVE:
            time.sleep(poll_s)
    except (OSError, RuntimeError) as e:
        raise ClusterError(f"following {job_id}: {_why(e)}; it may still run: deepgen jobs status {job_id} "
                           f"--address {address}") from None
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (deepgen jobs status {job_id} --address {address})",
              file=out, flush=True)
        return 130
    status = _status(info)
    if status in DONE:
        print(f"{job_id}: {status}", file=out, flush=True)
        return 0
    message = " ".join((info.message or "").split())[:300]
    raise ClusterError(f"job {job_id} {status}: {message or 'no message'}; "
                       f"logs: deepgen jobs logs {job_id} --address {address}")


# --- jobs list | status | logs | stop ---------------------------------------------------------------


def describe_job(info) -> dict[str, Any]:
    return {"submission_id": info.submission_id, "job_id": info.job_id, "status": _status(info),
            "entrypoint": info.entrypoint, "message": info.message, "start_time": info.start_time,
            "end_time": info.end_time, "metadata": dict(info.metadata or {})}


def _when(ms: int | None) -> str:
    return "-" if not ms else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _job_api_errors(command):
    """A `deepgen jobs` command whose job API calls fail midway (the head went away, a 5xx, a timeout)
    ends in one line naming the address, not a traceback."""
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except (OSError, RuntimeError) as e:  # requests' errors are OSErrors; the SDK raises RuntimeError
            raise ClusterError(f"the Ray job API at {args.address}: {_why(e)}") from None
    return run


@_job_api_errors
def cmd_jobs_list(args) -> int:
    jobs = [describe_job(j) for j in connect(args.address).list_jobs() if args.all or j.submission_id]
    jobs.sort(key=lambda j: j["start_time"] or 0)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print(f"no jobs on {args.address}")
        return 0
    print(f"{'SUBMISSION ID':56} {'STATUS':10} {'STARTED':20} RUN")
    for j in jobs:
        run = j["metadata"].get("deepgen.run_name") or j["entrypoint"][:60]
        print(f"{j['submission_id'] or j['job_id']:56} {j['status']:10} {_when(j['start_time']):20} {run}")
    return 0


def _existing(client, job_id: str):
    info = job_info(client, job_id)
    if info is None:
        raise ClusterError(f"{job_id}: no such job on this cluster; `deepgen jobs list` shows them")
    return info


@_job_api_errors
def cmd_jobs_status(args) -> int:
    info = describe_job(_existing(connect(args.address), args.id))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['submission_id']}: {info['status']}  ({info['message'] or '-'})")
    print(f"  started {_when(info['start_time'])}  ended {_when(info['end_time'])}")
    print(f"  entrypoint: {info['entrypoint']}")
    for k, v in sorted(info["metadata"].items()):
        print(f"  {k:20} {v}")
    return 0


@_job_api_errors
def cmd_jobs_logs(args) -> int:
    client = connect(args.address)
    _existing(client, args.id)
    if args.follow:
        return follow(client, args.id, args.address)
    print(client.get_job_logs(args.id), end="")
    return 0


@_job_api_errors
def cmd_jobs_stop(args) -> int:
    client = connect(args.address)
    status = _status(_existing(client, args.id))
    if status not in ACTIVE:
        print(f"{args.id}: already {status}; nothing to stop")
        return 0
    client.stop_job(args.id)
    deadline = time.monotonic() + args.timeout
    while _status(info := client.get_job_info(args.id)) in ACTIVE and time.monotonic() < deadline:
        time.sleep(1)
    print(f"{args.id}: {_status(info)}; rerunning `deepgen submit` for the same run retries it and resumes "
          "from the last checkpoint")
    return 0


def cmd_submit(args) -> int:
    from deepgen import console

    outcome: dict = {}
    code = submit(args.pipeline, args.address, overrides=args.set or [], tracking_uri=args.tracking_uri,
                  storage=args.storage, slot=args.slot, wait=args.wait, pip=args.pip, outcome=outcome)
    if args.json:
        if args.wait and code == 0:
            outcome["status"] = "SUCCEEDED"
        console.print_json(outcome)
    return code


# --- schedule ------------------------------------------------------------------------------------


def cmd_schedule(args) -> int:
    from deepgen import schedule

    spec = load_spec(args.pipeline, args.set or [], args.storage)  # a broken spec fails here, not at 3 a.m.
    cron = schedule.validate_cron(args.cron)
    pipeline = Path(args.pipeline)
    if pipeline.is_absolute():
        try:
            pipeline = pipeline.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            print(f"note: {pipeline} is outside this folder; the image and the crontab must see it at that path")
    extra = [a for item in (args.set or []) for a in ("--set", item)]
    paths = schedule.write_schedule(
        args.out, str(pipeline), cron, name=args.name or spec.name, address=args.address, image=args.image,
        gpu_image=args.gpu_image, tracking_uri=args.tracking_uri or None, storage=args.storage,
        namespace=args.namespace, local_address=args.crontab_address,
        local_tracking_uri=args.crontab_tracking_uri, local_storage=args.crontab_storage,
        # the crontab runs here (the pipeline's relative paths), with this interpreter and this checkout's jobs/
        project_dir=Path.cwd(), venv=str(Path(sys.executable).parent.parent), entry_root=PROJECT_ROOT,
        extra_args=extra)
    nxt = schedule.next_after(cron, datetime.now(UTC))
    print(f"Scheduled retraining of {pipeline} at '{cron}' (next tick {schedule.format_slot(nxt)} in UTC); "
          "each tick is one slot, trained and registered at most once:")
    print(f"  {paths.raycronjob}\n      KubeRay >= 1.6 with the RayCronJob feature gate; each tick gets its own "
          f"Ray cluster:\n      kubectl apply -f {paths.raycronjob}")
    print(f"  {paths.cronjob}\n      any KubeRay: submits to the long-lived RayCluster at {args.address}:\n"
          f"      kubectl apply -f {paths.cronjob}")
    where = f"submits to {args.crontab_address}" if args.crontab_address else "runs jobs/retrain.py on this machine"
    print(f"  {paths.crontab}\n      one machine, local time, {where}:\n"
          f"      (crontab -l 2>/dev/null; cat {paths.crontab}) | crontab -")
    return 0


# --- argparse --------------------------------------------------------------------------------------


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=default_address(),
                   help="Ray job API, http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:
    """Register the cluster subcommands on the `deepgen` parser."""
    from deepgen import schedule

    p = sub.add_parser(
        "submit", help="run a pipeline as a Ray job on a cluster (idempotent per run and slot)",
        description="Validate the pipeline here, resolve its paths, ship it with the code as the job's "
                    "working_dir and run it on the cluster (jobs/run_pipeline.py, or jobs/retrain.py for a "
                    "--slot). The submission id is deepgen-NAME-SPECHASH[-SLOT]: a job with that id that is "
                    "pending, running or succeeded is not submitted again; a failed or stopped one is retried "
                    "as ID-retryN and resumes from its last checkpoint.")
    p.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/quickstart.yaml")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a spec field by its dotted path (repeatable)")
    _address_arg(p)
    p.add_argument("--tracking-uri", help="MLflow server the job logs and registers to (its MLFLOW_TRACKING_URI)")
    p.add_argument("--storage", help="checkpoints and Ray run state: a path every node sees (also holds the runs "
                                     "folder: prepared data) or an s3:// / gs:// URI")
    p.add_argument("--slot", help="schedule slot YYYY-MM-DDTHH:MMZ: one run per slot (jobs/retrain.py)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; non-zero unless it "
                                                       "succeeded")
    p.add_argument("--pip", action="store_true",
                   help="install the project's requirements (pinned by constraints.txt) in the job's runtime_env, "
                        "for a cluster whose image lacks them")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (submission id, run, action, status); all else on stderr")
    p.set_defaults(func=cmd_submit, json_result=True)

    jobs = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster").add_subparsers(
        dest="jobs_command", required=True)
    p = jobs.add_parser("list", help="the cluster's jobs with their status and run")
    _address_arg(p)
    p.add_argument("--all", action="store_true", help="also jobs not submitted through the job API")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("status", help="status, times, entrypoint and metadata of one job")
    p.add_argument("id", help="submission id, e.g. deepgen-quickstart-1a2b3c4d5e")
    _address_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_jobs_status)
    p = jobs.add_parser("logs", help="a job's driver logs")
    p.add_argument("id", help="submission id")
    _address_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    p.set_defaults(func=cmd_jobs_logs)
    p = jobs.add_parser("stop", help="stop a pending or running job")
    p.add_argument("id", help="submission id")
    _address_arg(p)
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for it to stop (default 30)")
    p.set_defaults(func=cmd_jobs_stop)

    p = sub.add_parser(
        "schedule", help="write a RayCronJob, a Kubernetes CronJob and a crontab line for scheduled retraining",
        description="Validate the pipeline and write three ways to retrain it on a cron schedule: a KubeRay "
                    "RayCronJob (jobs/retrain.py --cron), a Kubernetes CronJob (deepgen submit --slot) and a "
                    "crontab line. Each tick belongs to a slot; a slot trains and registers at most once.")
    p.add_argument("pipeline", help="pipeline YAML file, relative to the project root (the image's /app)")
    p.add_argument("--cron", required=True, help='five-field cron expression, e.g. "0 3 * * *" (UTC on Kubernetes)')
    p.add_argument("--out", default="deepgen-schedule", help="folder for the three files (default %(default)s)")
    p.add_argument("--name", help="name of the schedule (default: the pipeline's name)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override passed to every run (repeatable)")
    p.add_argument("--address", default=schedule.RAY_ADDRESS,
                   help="Ray job API the CronJob submits to, in the cluster (default %(default)s)")
    p.add_argument("--image", default=schedule.CPU_IMAGE, help="image of the head and submitter (default %(default)s)")
    p.add_argument("--gpu-image", default=schedule.GPU_IMAGE, help="GPU worker image (default %(default)s)")
    p.add_argument("--tracking-uri", default=schedule.TRACKING_URI,
                   help="MLflow server, in the cluster (default %(default)s; '' for none)")
    p.add_argument("--storage", help="checkpoints: a shared path or an s3:// / gs:// URI (default: the pipeline's)")
    p.add_argument("--namespace", default=schedule.NAMESPACE, help="Kubernetes namespace (default %(default)s)")
    p.add_argument("--crontab-address", help="Ray job API the crontab line submits to (default: it runs "
                                             "jobs/retrain.py on the machine itself)")
    p.add_argument("--crontab-tracking-uri", help="MLflow server for the crontab line's local runs")
    p.add_argument("--crontab-storage", help="checkpoints for the crontab line's runs (default: the pipeline's; "
                                             "--storage is the cluster's)")
    p.set_defaults(func=cmd_schedule)


# --- jobs/retrain.py --------------------------------------------------------------------------------


def scheduled_spec(pipeline, slot: str, overrides: Sequence[str] = (), storage: str | None = None):
    """The spec a retrain of `slot` runs: registry inputs resolved, then run NAME-SPECHASH-SLOT.

    A fine-tuning pipeline's `model.pretrained: NAME@ALIAS` becomes the version it points at now, as in
    `deepgen run`; the spec hash (so the run name) follows it, so the first slot after the encoder's
    champion moves fine-tunes the new encoder instead of finding the slot's old run done."""
    from deepgen import orchestrate

    spec = orchestrate.resolve_inputs(load_spec(pipeline, list(overrides), storage))
    return with_run_name(spec, scheduled_run_name(spec, slot))


def retrain_main(argv: Sequence[str] | None = None) -> int:
    """`python jobs/retrain.py PIPELINE (--slot SLOT | --cron CRON) [--storage S] [--set F=V ...]`."""
    import warnings

    parser = argparse.ArgumentParser(
        prog="jobs/retrain.py",
        description="Scheduled retraining: run the pipeline once per schedule slot. The run name is "
                    "NAME-SPECHASH-SLOT, so a rerun of the same slot resumes or finds it done; the new model "
                    "registers, and moves champion only if it passes the gate.")
    parser.add_argument("pipeline", help="pipeline YAML file")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--slot", help="the slot, YYYY-MM-DDTHH:MMZ (UTC)")
    when.add_argument("--cron", help="cron expression: the slot is the latest tick at or before now (UTC)")
    parser.add_argument("--storage", help="checkpoints and runs folder: a shared path, or an s3:// / gs:// URI")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a spec field (repeatable)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="mlflow")
    try:
        from deepgen import orchestrate, tracking
        from deepgen.cli import print_summary
        from deepgen.schedule import current_slot, format_slot, parse_slot

        slot = format_slot(parse_slot(args.slot)) if args.slot else current_slot(args.cron)
        spec = scheduled_spec(args.pipeline, slot, args.set or [], args.storage)
        orchestrate.say(f"retrain: {spec.name} for slot {slot} as run {spec.run_name}")
        summary = orchestrate.run_pipeline(spec)
        if not summary.reused:
            tracking.set_tags(summary.run_id, {"deepgen.slot": slot})
        print_summary(summary)
        return 0
    except DeepgenError as e:
        print(f"deepgen: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("deepgen: interrupted; rerun the same slot to resume", file=sys.stderr)
        return 130
