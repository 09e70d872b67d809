"""The Ray job API, as deepgen uses it: connect to a cluster's dashboard address, name submissions, decide
whether a run is to be submitted, retried or left alone, read and follow jobs.

A submission id is `deepgen-RUN_NAME` (then `-r1`, `-r2`, ... for retries of a failed attempt): submitting the
same run again finds its job instead of starting a second one.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

from deepgen.errors import DeepgenError

ACTIVE = ("PENDING", "RUNNING")

DONE = ("SUCCEEDED",)

RETRYABLE = ("FAILED", "STOPPED")

MAX_ATTEMPTS = 100


class ClusterError(DeepgenError):
    """The Ray cluster cannot be reached, refused a request, or a job did not succeed."""

    exit_status = 1


def submission_id(run_name: str, attempt: int = 0) -> str:
    """`deepgen-RUN_NAME`, then `deepgen-RUN_NAME-retry1`, `-retry2`, ... for retries of a failed job."""
    base = "deepgen-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-")
    return base if attempt == 0 else f"{base}-retry{attempt}"


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
        raise ClusterError(f"cannot reach the Ray job API at {address}: {why_failed(e)}") from None


def why_failed(e: Exception) -> str:
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
        raise ClusterError(f"job {job_id}: {why_failed(e)}") from None


def status_of(info) -> str:
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
        if status_of(info) not in RETRYABLE:
            return "exists", submission_id(run_name, attempt), info
        last = info
    raise ClusterError(f"{run_name}: {MAX_ATTEMPTS} failed attempts on this cluster; "
                       f"see `deepgen jobs logs {submission_id(run_name, MAX_ATTEMPTS - 1)}`")


def describe_job(info) -> dict[str, Any]:
    return {"submission_id": info.submission_id, "job_id": info.job_id, "status": status_of(info),
            "entrypoint": info.entrypoint, "message": info.message, "start_time": info.start_time,
            "end_time": info.end_time, "metadata": dict(info.metadata or {})}


def existing_job(client, job_id: str):
    info = job_info(client, job_id)
    if info is None:
        raise ClusterError(f"{job_id}: no such job on this cluster; `deepgen jobs list` shows them")
    return info


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
        while status_of(info := client.get_job_info(job_id)) in ACTIVE:
            time.sleep(poll_s)
    except (OSError, RuntimeError) as e:
        raise ClusterError(f"following {job_id}: {why_failed(e)}; it may still run: deepgen jobs status {job_id} "
                           f"--address {address}") from None
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (deepgen jobs status {job_id} --address {address})",
              file=out, flush=True)
        return 130
    status = status_of(info)
    if status in DONE:
        print(f"{job_id}: {status}", file=out, flush=True)
        return 0
    message = " ".join((info.message or "").split())[:300]
    raise ClusterError(f"job {job_id} {status}: {message or 'no message'}; "
                       f"logs: deepgen jobs logs {job_id} --address {address}")
