"""Submitting a pipeline to a Ray cluster as a job (`deepgen submit`; its commands, with `deepgen jobs ...` and
`deepgen schedule`, are in deepgen.cli.cluster; what the job gets in deepgen.submission; the job API client
in deepgen.jobs_api).

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

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deepgen.jobs_api import (
    ACTIVE,
    ClusterError,
    connect,
    follow,
    plan_submission,
    status_of,
    submission_id,
    why_failed,
)
from deepgen.submission import (
    entrypoint,
    is_uri,
    load_spec,
    missing_local_paths,
    pin_pretrained,
    resolve_paths,
    runtime_env,
    scheduled_run_name,
    stage,
)


def submit(pipeline: str, address: str | None, overrides: Sequence[str] = (), tracking_uri: str | None = None,
           storage: str | None = None, slot: str | None = None, wait: bool = False, pip: bool = False,
           out=None, outcome: dict | None = None) -> int:
    """Submit (or find, or retry) the run's job; `outcome` receives what happened, for --json."""
    from deepgen.cron import format_slot, parse_slot

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
        status = status_of(info)
        if outcome is not None:
            outcome["status"] = status
        print(f"{job_id}: already {status} (run {run_name}); nothing submitted", file=out, flush=True)
        if wait and status in ACTIVE:
            return follow(client, job_id, address, out=out)
        return 0
    if action == "retry":
        print(f"{submission_id(run_name, 0)}: the last attempt {status_of(info)}; retrying as {job_id} "
              f"(resumes run {run_name} from its last checkpoint)", file=out, flush=True)
    metadata = {"deepgen.pipeline": str(pipeline), "deepgen.name": spec.name, "deepgen.run_name": run_name,
                "deepgen.spec_hash": spec.spec_hash(), "deepgen.slot": slot or "",
                "deepgen.model": spec.registry.model_name}
    with tempfile.TemporaryDirectory(prefix="deepgen-submit-") as tmp:
        # the run name goes into the shipped spec, so the cluster cannot derive another one
        rel = stage(spec.with_run_name(spec.run_name), Path(tmp), spec.name)
        renv = runtime_env(Path(tmp), tracking_uri=tracking_uri, pip=pip)
        try:
            client.submit_job(entrypoint=entrypoint(rel, slot), submission_id=job_id, runtime_env=renv,
                              metadata=metadata)
        except RuntimeError as e:
            if "already" in str(e).lower():  # a concurrent submission of the same run won the race
                print(f"{job_id}: already submitted (run {run_name}); nothing submitted", file=out, flush=True)
                return follow(client, job_id, address, out=out) if wait else 0
            raise ClusterError(f"submitting {job_id}: {why_failed(e)}") from None
    print(f"submitted {job_id} (run {run_name}) to {address}", file=out, flush=True)
    print(f"  watch: deepgen jobs logs {job_id} --address {address} --follow", file=out, flush=True)
    return follow(client, job_id, address, out=out) if wait else 0
