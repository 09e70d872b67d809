"""The cluster commands: `deepgen submit`, `deepgen jobs list | status | logs | stop`, `deepgen schedule`; and
jobs/retrain.py's entry point (one run per schedule slot)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from deepgen import console
from deepgen.cluster import submit
from deepgen.cron import format_slot, next_after, validate_cron
from deepgen.jobs_api import (
    ACTIVE,
    ClusterError,
    connect,
    default_address,
    describe_job,
    existing_job,
    follow,
    status_of,
    why_failed,
)
from deepgen.submission import PROJECT_ROOT, load_spec, scheduled_spec


def _job_api_errors(command):
    """A `deepgen jobs` command whose job API calls fail midway (the head went away, a 5xx, a timeout)
    ends in one line naming the address, not a traceback."""
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except (OSError, RuntimeError) as e:  # requests' errors are OSErrors; the SDK raises RuntimeError
            raise ClusterError(f"the Ray job API at {args.address}: {why_failed(e)}") from None
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
        print(f"{j['submission_id'] or j['job_id']:56} {j['status']:10} {console.when(j['start_time']):20} {run}")
    return 0


@_job_api_errors
def cmd_jobs_status(args) -> int:
    info = describe_job(existing_job(connect(args.address), args.id))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['submission_id']}: {info['status']}  ({info['message'] or '-'})")
    print(f"  started {console.when(info['start_time'])}  ended {console.when(info['end_time'])}")
    print(f"  entrypoint: {info['entrypoint']}")
    for k, v in sorted(info["metadata"].items()):
        print(f"  {k:20} {v}")
    return 0


@_job_api_errors
def cmd_jobs_logs(args) -> int:
    client = connect(args.address)
    existing_job(client, args.id)
    if args.follow:
        return follow(client, args.id, args.address)
    print(client.get_job_logs(args.id), end="")
    return 0


@_job_api_errors
def cmd_jobs_stop(args) -> int:
    client = connect(args.address)
    status = status_of(existing_job(client, args.id))
    if status not in ACTIVE:
        print(f"{args.id}: already {status}; nothing to stop")
        return 0
    client.stop_job(args.id)
    deadline = time.monotonic() + args.timeout
    while status_of(info := client.get_job_info(args.id)) in ACTIVE and time.monotonic() < deadline:
        time.sleep(1)
    print(f"{args.id}: {status_of(info)}; rerunning `deepgen submit` for the same run retries it and resumes "
          "from the last checkpoint")
    return 0


def cmd_submit(args) -> int:
    outcome: dict = {}
    code = submit(args.pipeline, args.address, overrides=args.set or [], tracking_uri=args.tracking_uri,
                  storage=args.storage, slot=args.slot, wait=args.wait, pip=args.pip, outcome=outcome)
    if args.json:
        if args.wait and code == 0:
            outcome["status"] = "SUCCEEDED"
        console.print_json(outcome)
    return code


def cmd_schedule(args) -> int:
    from deepgen import schedule

    spec = load_spec(args.pipeline, args.set or [], args.storage)  # a broken spec fails here, not at 3 a.m.
    cron = validate_cron(args.cron)
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
    nxt = next_after(cron, datetime.now(UTC))
    print(f"Scheduled retraining of {pipeline} at '{cron}' (next tick {format_slot(nxt)} in UTC); "
          "each tick is one slot, trained and registered at most once:")
    print(f"  {paths.raycronjob}\n      KubeRay >= 1.6 with the RayCronJob feature gate; each tick gets its own "
          f"Ray cluster:\n      kubectl apply -f {paths.raycronjob}")
    print(f"  {paths.cronjob}\n      any KubeRay: submits to the long-lived RayCluster at {args.address}:\n"
          f"      kubectl apply -f {paths.cronjob}")
    where = f"submits to {args.crontab_address}" if args.crontab_address else "runs jobs/retrain.py on this machine"
    print(f"  {paths.crontab}\n      one machine, local time, {where}:\n"
          f"      (crontab -l 2>/dev/null; cat {paths.crontab}) | crontab -")
    return 0


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

    def retrain() -> int:
        from deepgen import orchestrate, tracking
        from deepgen.cli.pipeline import print_summary
        from deepgen.cron import current_slot, format_slot, parse_slot

        slot = format_slot(parse_slot(args.slot)) if args.slot else current_slot(args.cron)
        spec = scheduled_spec(args.pipeline, slot, args.set or [], args.storage)
        orchestrate.say(f"retrain: {spec.name} for slot {slot} as run {spec.run_name}")
        summary = orchestrate.run_pipeline(spec)
        if not summary.reused:
            tracking.set_tags(summary.run_id, {"deepgen.slot": slot})
        print_summary(summary)
        return 0

    return console.run_command(retrain, interrupted="interrupted; rerun the same slot to resume")
