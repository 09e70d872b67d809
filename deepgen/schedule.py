"""Scheduled retraining: cron expressions, schedule slots, and what each scheduler needs to run a pipeline.

Three targets, one schedule:

- KubeRay `RayCronJob` (KubeRay >= 1.6, alpha, behind the operator's `RayCronJob` feature gate): each
  tick creates a `RayJob` with its own Ray cluster that runs `python jobs/retrain.py PIPELINE --cron CRON`;
  the entry computes its slot from the cron expression and the time it starts.
- a plain Kubernetes `CronJob` (any KubeRay): each tick runs `deepgen submit PIPELINE --address ... --slot
  SLOT` against a long-lived `RayCluster`, the slot computed in the pod by `python -m deepgen.schedule slot`.
- a crontab line for a single machine: `deepgen submit` to a Ray address, or `python jobs/retrain.py`
  with a local Ray when there is no cluster.

A *slot* is the scheduled time a run belongs to (`2026-11-27T03:00Z`): the latest time at or before "now"
that the cron expression matches. Retries and late starts of the same tick compute the same slot, which is
what makes submission ids deterministic and the scheduled run idempotent.

Cron expressions are the standard five fields (minute hour day-of-month month day-of-week) with `*`,
numbers, names (`jan`, `mon`), lists, ranges and steps (`*/15`, `1-5`, `8-18/2`, `5/10` = 5-59/10), plus
`@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`. Day-of-week 0 and 7 are
Sunday. When both day-of-month and day-of-week are restricted, a day matches if either does (as in cron);
like the cron library that Kubernetes and KubeRay use, a stepped star such as `*/2` counts as restricted.

Everything here is pure: functions build dicts and strings; only `write_schedule` touches the filesystem.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from deepgen import __version__, console
from deepgen.cron import ScheduleError, current_slot, validate_cron

# --- defaults shared with infra/ (tests/test_infra.py checks the two agree) ---------------------------

NAMESPACE = "deepgen"
RAY_CLUSTER = "deepgen-ray"                                  # infra/kuberay/raycluster.yaml
RAY_ADDRESS = f"http://{RAY_CLUSTER}-head-svc:8265"          # KubeRay names the head Service NAME-head-svc
TRACKING_URI = "http://deepgen-mlflow:5000"                  # infra/mlflow/mlflow.yaml
IMAGE_REPOSITORY = "deepgen"                                 # built from infra/Dockerfile
CPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-cpu"          # --build-arg TORCH_VARIANT=cpu
GPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-cuda"         # --build-arg TORCH_VARIANT=cuda
RAY_VERSION = "2.60.0"                                       # constraints.txt
RAY_TOKEN_SECRET = "deepgen-ray-token"                       # key auth_token; never written by deepgen
MLFLOW_AUTH_SECRET = "deepgen-mlflow-auth"                   # keys username and password of MLflow's basic auth
RUNS_VOLUME_CLAIM = "deepgen-runs"                           # ReadWriteMany PVC, mounted at RUNS_MOUNT
APP_DIR = "/app"                                             # WORKDIR of the image: jobs/, pipelines/
RUNS_MOUNT = f"{APP_DIR}/deepgen-runs"                       # the pipelines' default runs_dir, shared
RETRAIN_ENTRY = "jobs/retrain.py"
RUN_ENTRY = "jobs/run_pipeline.py"

KUBERAY_SOURCE = """\
KubeRay >= 1.6 (alpha): apiVersion ray.io/v1, kind RayCronJob; spec.schedule and spec.jobTemplate (the
fields of a RayJob spec, with no `spec:` wrapper) are required; spec.suspend (optional) pauses it; no timeZone.
Checked against ray-project/kuberay: ray-operator/config/crd/bases/ray.io_raycronjobs.yaml,
config/samples/ray-cronjob.sample.yaml and pkg/features/features.go (feature gate RayCronJob, alpha
since v1.6, off by default)."""


# --- cron expressions --------------------------------------------------------------------------------


# --- names ------------------------------------------------------------------------------------------


def pipeline_name(pipeline: str | Path) -> str:
    """The `name:` of a pipeline file (unvalidated; the CLI validates the whole file), else its stem."""
    path = Path(pipeline)
    try:
        from deepgen.config import load_yaml  # no aliases, as the pipeline itself is read

        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ScheduleError(f"{path}: no such pipeline file") from None
    except yaml.YAMLError:
        raw = None
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
        return raw["name"].strip()
    return path.stem


def k8s_name(*parts: str, limit: int = 30) -> str:
    """A DNS-1123 label from `parts` (lowercase alphanumerics and '-'), at most `limit` characters.

    30 leaves room for what the controllers append: a CronJob's Jobs (+11), a RayCronJob's RayJobs
    (+9), their RayClusters (+6) and the head Service (`-head-svc`), all within Kubernetes' 63.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    slug = re.sub(r"-{2,}", "-", slug)
    if not slug:
        raise ScheduleError(f"cannot make a Kubernetes name from {parts!r}")
    if len(slug) > limit:  # keep names of long pipelines apart: a hash of the whole name ends the cut
        digest = hashlib.sha256(slug.encode()).hexdigest()[:5]
        slug = f"{slug[:limit - 6].rstrip('-')}-{digest}"
    return slug


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


# --- commands ---------------------------------------------------------------------------------------


def retrain_command(pipeline: str, cron: str | None = None, *, slot: str | None = None,
                    storage: str | None = None, extra_args: Sequence[str] = (), python: str = "python",
                    entry: str = RETRAIN_ENTRY) -> list[str]:
    """`python jobs/retrain.py PIPELINE [--slot SLOT | --cron CRON] [--storage S] [EXTRA...]`."""
    cmd = [python, entry, pipeline]
    if slot:
        cmd += ["--slot", slot]
    elif cron:
        cmd += ["--cron", validate_cron(cron)]
    if storage:
        cmd += ["--storage", storage]
    return cmd + list(extra_args)


def run_command(pipeline: str, *, storage: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """`python jobs/run_pipeline.py PIPELINE` [--set tracking.storage_path=S] [EXTRA...] (one run)."""
    cmd = ["python", RUN_ENTRY, pipeline]
    if storage:
        cmd += ["--set", f"tracking.storage_path={storage}"]
    return cmd + list(extra_args)


def submit_command(pipeline: str, *, address: str, tracking_uri: str | None = None,
                   storage: str | None = None, slot: str | None = None, extra_args: Sequence[str] = (),
                   deepgen: str = "deepgen") -> list[str]:
    """`deepgen submit PIPELINE --address ADDR [--tracking-uri URI] [--storage S] [--slot SLOT]`."""
    cmd = [deepgen, "submit", pipeline, "--address", address]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    if storage:
        cmd += ["--storage", storage]
    if slot:
        cmd += ["--slot", slot]
    return cmd + list(extra_args)


def slot_command(cron: str, *, python: str = "python", local: bool = False) -> list[str]:
    """`python -m deepgen.schedule slot --cron CRON [--local]`: prints the current slot."""
    return [python, "-m", "deepgen.schedule", "slot", "--cron", validate_cron(cron)] + (["--local"] if local else [])


def _with_slot(cmd: list[str], slot_cmd: list[str], dollar: str = "$") -> str:
    """Shell text of `cmd --slot "$(slot_cmd)"` (`dollar="$$"` escapes it from Kubernetes' $(VAR) expansion)."""
    return f'{shlex.join(cmd)} --slot "{dollar}({shlex.join(slot_cmd)})"'


# --- Kubernetes manifests ---------------------------------------------------------------------------


def _labels(component: str, pipeline: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "deepgen", "app.kubernetes.io/component": component}
    if pipeline:
        labels["deepgen.io/pipeline"] = _label_value(pipeline)
    return labels


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _ray_container(name: str, image: str, *, tracking_uri: str | None, resources: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image, "workingDir": APP_DIR}
    if tracking_uri:
        c["env"] = [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}, *mlflow_credentials_env()]
    c["resources"] = resources
    c["securityContext"] = _container_security()
    c["volumeMounts"] = [{"name": "deepgen-runs", "mountPath": RUNS_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}]
    return c


def mlflow_credentials_env() -> list[dict[str, Any]]:
    """MLFLOW_TRACKING_USERNAME / PASSWORD from the Secret of the tracking server's basic auth."""
    return [{"name": f"MLFLOW_TRACKING_{key.upper()}", "valueFrom": {"secretKeyRef": {"name": MLFLOW_AUTH_SECRET,
                                                                                   "key": key}}}
            for key in ("username", "password")]


def _ray_pod(spec: dict[str, Any]) -> dict[str, Any]:
    """A Ray pod spec: no service-account token (nothing in a job needs the Kubernetes API, and the job API
    runs whatever is submitted, so a token there would hand the API to every job)."""
    return {"automountServiceAccountToken": False, **spec}


def _ray_volumes(runs_claim: str) -> list[dict[str, Any]]:
    return [
        {"name": "deepgen-runs", "persistentVolumeClaim": {"claimName": runs_claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # Ray's object store; the default 64 MiB is too small
    ]


def ray_cluster_spec(*, image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE, tracking_uri: str | None = TRACKING_URI,
                     gpu_workers_max: int = 4, gpus_per_worker: int = 1, runs_claim: str = RUNS_VOLUME_CLAIM,
                     token_auth: bool = True) -> dict[str, Any]:
    """The `rayClusterSpec` of a RayJob: a CPU head and an autoscaled GPU worker group (0..max).

    `authOptions.mode: token` (KubeRay >= 1.5.1, Ray >= 2.52) makes the operator generate the token,
    put it in a Secret and set RAY_AUTH_MODE / RAY_AUTH_TOKEN on every Ray container and on the job
    submitter, which is what lets the operator itself still talk to the cluster's job API.
    """
    spec: dict[str, Any] = {"rayVersion": RAY_VERSION, "enableInTreeAutoscaling": True}
    if token_auth:
        spec["authOptions"] = {"mode": "token"}
    spec["headGroupSpec"] = {
        "serviceType": "ClusterIP",
        "rayStartParams": {},
        "template": {"spec": _ray_pod({
            "securityContext": _pod_security(),
            "containers": [_ray_container(
                "ray-head", image, tracking_uri=tracking_uri,
                resources={"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}})],
            "volumes": _ray_volumes(runs_claim),
        })},
    }
    gpu = str(gpus_per_worker)
    spec["workerGroupSpecs"] = [{
        "groupName": "gpu",
        "replicas": 0,
        "minReplicas": 0,
        "maxReplicas": gpu_workers_max,
        "rayStartParams": {},
        "template": {"spec": _ray_pod({
            "securityContext": _pod_security(),
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [_ray_container(
                "ray-worker", gpu_image, tracking_uri=tracking_uri,
                resources={"requests": {"cpu": "7", "memory": "28Gi", "nvidia.com/gpu": gpu},
                           "limits": {"cpu": "8", "memory": "28Gi", "nvidia.com/gpu": gpu}})],
            "volumes": _ray_volumes(runs_claim),
        })},
    }]
    return spec


def _job_spec(entrypoint: list[str], name: str, *, tracking_uri: str | None, cluster: dict[str, Any],
              deadline_s: int, retries: int = 0) -> dict[str, Any]:
    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}
    spec: dict[str, Any] = {
        "entrypoint": shlex.join(entrypoint),
        "metadata": {"deepgen.io/pipeline": name},
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 3600,
        "activeDeadlineSeconds": deadline_s,
        "backoffLimit": retries,       # each retry gets a new RayCluster
    }
    if env_vars:
        spec["runtimeEnvYAML"] = yaml.safe_dump({"env_vars": env_vars}, sort_keys=False)
    spec["rayClusterSpec"] = cluster
    return spec


def render_rayjob(pipeline: str, name: str, *, image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE,
                  tracking_uri: str | None = TRACKING_URI, storage: str | None = None,
                  namespace: str = NAMESPACE, extra_args: Sequence[str] = (), deadline_s: int = 24 * 3600,
                  **cluster: Any) -> dict[str, Any]:
    """A KubeRay `RayJob` (ray.io/v1) that runs one pipeline on a cluster of its own, then deletes it."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": k8s_name("deepgen", name), "namespace": namespace, "labels": _labels("run", name)},
        "spec": _job_spec(run_command(pipeline, storage=storage, extra_args=extra_args), name,
                          tracking_uri=tracking_uri, deadline_s=deadline_s,
                          cluster=ray_cluster_spec(image=image, gpu_image=gpu_image, tracking_uri=tracking_uri,
                                                   **cluster)),
    }


def render_raycronjob(pipeline: str, name: str, cron: str, *, image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE,
                      tracking_uri: str | None = TRACKING_URI, storage: str | None = None,
                      namespace: str = NAMESPACE, extra_args: Sequence[str] = (), deadline_s: int = 23 * 3600,
                      suspend: bool = False, **cluster: Any) -> dict[str, Any]:
    """A KubeRay `RayCronJob` (ray.io/v1, KubeRay >= 1.6 alpha): each tick a RayJob runs jobs/retrain.py.

    The entry gets `--cron`, not a slot: KubeRay 1.6 puts the tick's time only in an annotation of the
    RayJob (`ray.io/cronjob-scheduled-timestamp`), out of the driver's reach, so the entry truncates
    its own start time to the schedule (`slot_for`). The RayCronJob has no `timeZone` field in 1.6: the
    operator reads the schedule in its own zone (UTC in the published images).
    """
    cron = validate_cron(cron)
    spec: dict[str, Any] = {"schedule": cron}
    if suspend:
        spec["suspend"] = True
    spec["jobTemplate"] = _job_spec(
        retrain_command(pipeline, cron, storage=storage, extra_args=extra_args), name,
        tracking_uri=tracking_uri, deadline_s=deadline_s, retries=1,  # safe: a retry finds its slot done
        cluster=ray_cluster_spec(image=image, gpu_image=gpu_image, tracking_uri=tracking_uri, **cluster))
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCronJob",
        "metadata": {"name": k8s_name("deepgen-retrain", name), "namespace": namespace,
                     "labels": _labels("retrain", name)},
        "spec": spec,
    }


def render_cronjob(pipeline: str, name: str, cron: str, *, address: str = RAY_ADDRESS, image: str = CPU_IMAGE,
                   tracking_uri: str | None = TRACKING_URI, storage: str | None = None,
                   namespace: str = NAMESPACE, extra_args: Sequence[str] = (),
                   token_secret: str | None = RAY_TOKEN_SECRET, time_zone: str = "Etc/UTC",
                   deadline_s: int = 23 * 3600) -> dict[str, Any]:
    """A plain Kubernetes `CronJob` (batch/v1) whose pod runs `deepgen submit` against a RayCluster.

    The pod computes the slot of the tick it belongs to from the schedule and its start time, so a
    retry or a late start (within `startingDeadlineSeconds`) submits the same slot again, which the
    submission id makes a no-op. The Ray token comes from the Secret `token_secret` (key `auth_token`).
    """
    cron = validate_cron(cron)
    command = _with_slot(
        submit_command(pipeline, address=address, tracking_uri=tracking_uri, storage=storage, extra_args=extra_args),
        slot_command(cron), dollar="$$")  # Kubernetes turns $$ into $; the shell then runs $(...)
    container: dict[str, Any] = {
        "name": "submit",
        "image": image,
        "workingDir": APP_DIR,
        "command": ["sh", "-c", f"exec {command}"],
    }
    if token_secret:
        container["env"] = [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "auth_token"}}},
        ]
    if tracking_uri:  # `deepgen submit` passes them on to the job
        container.setdefault("env", []).extend(mlflow_credentials_env())
    container["resources"] = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    container["securityContext"] = _container_security()
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": k8s_name("deepgen-submit", name), "namespace": namespace,
                     "labels": _labels("retrain", name)},
        "spec": {
            "schedule": cron,
            "timeZone": time_zone,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": deadline_s,
                "template": {
                    "metadata": {"labels": _labels("retrain", name)},
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,
                        "securityContext": _pod_security(),
                        "containers": [container],
                    },
                },
            }},
        },
    }


# --- crontab ----------------------------------------------------------------------------------------


def render_crontab_line(pipeline: str, name: str, cron: str, *, project_dir: str | Path = ".",
                        address: str | None = None, tracking_uri: str | None = None, storage: str | None = None,
                        venv: str = ".venv", log: str | None = None, token_auth: bool = True,
                        extra_args: Sequence[str] = (), entry_root: str | Path | None = None) -> str:
    """One crontab line for a single machine, run in `project_dir` (where the pipeline's relative paths
    point) with the venv `venv` and the job entry under `entry_root` (default: both in `project_dir`).

    With an `address`, the tick submits to that Ray cluster (`deepgen submit`); without one it runs
    `python jobs/retrain.py` on this machine with a local Ray. Either way the slot is computed in the
    machine's local time (crontab's clock) and passed explicitly. `token_auth` sets RAY_AUTH_MODE=token
    for the submission; the token is read from ~/.ray/auth_token (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH
    set in the crontab), never written here.
    """
    cron = validate_cron(cron)
    project = str(Path(project_dir).expanduser().resolve())
    log = log or f"deepgen-runs/schedule/{k8s_name(name, limit=60)}.log"
    python, deepgen = f"{venv}/bin/python", f"{venv}/bin/deepgen"
    slot_cmd = slot_command(cron, python=python, local=True)
    if address:
        body = _with_slot(submit_command(pipeline, address=address, tracking_uri=tracking_uri, storage=storage,
                                         extra_args=extra_args, deepgen=deepgen), slot_cmd)
        if token_auth:
            body = f"RAY_AUTH_MODE=token {body}"
    else:
        entry = str(Path(entry_root) / RETRAIN_ENTRY) if entry_root else RETRAIN_ENTRY
        body = _with_slot(retrain_command(pipeline, storage=storage, extra_args=extra_args, python=python,
                                          entry=entry), slot_cmd)
        if tracking_uri:
            body = f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} {body}"
    line = (f"{cron} cd {shlex.quote(project)} && mkdir -p {shlex.quote(str(Path(log).parent))} && "
            f"{body} >> {shlex.quote(log)} 2>&1")
    # cron turns an unescaped % into a newline; nothing above should contain one, but a path might.
    return line.replace("%", "\\%")


# --- YAML out ---------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else ('"' if "*" in data else None)  # quote cron-like text, as people write it
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(*manifests: dict[str, Any], header: str | None = None) -> str:
    """YAML text of one or more manifests (separated by `---`), after an optional `# ` comment header."""
    text = "---\n".join(yaml.dump(m, Dumper=_Dumper, sort_keys=False, width=4096) for m in manifests)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines()) + text
    return text


def _header(kind: str, pipeline: str, cron: str) -> str:
    return "\n".join([
        f"{kind} for scheduled retraining of {pipeline} at '{cron}'.",
        f"Written by deepgen.schedule (deepgen {__version__}): regenerate rather than edit.",
    ])


RAYCRONJOB_NOTES = f"""\
{KUBERAY_SOURCE}
Enable it with the operator flag --feature-gates=RayCronJob=true (Helm values: featureGates, the
entry `- name: RayCronJob` with `enabled: true`).
Each tick creates a RayJob with its own Ray cluster (deleted after the job); the entry computes its
slot from --cron and its start time. The shared runs volume ({RUNS_VOLUME_CLAIM}, ReadWriteMany) is
mounted at {RUNS_MOUNT}, where the pipelines keep prepared data and checkpoints by default.
Token auth: authOptions.mode=token (KubeRay >= 1.5.1, Ray >= 2.52): the operator makes the token."""

CRONJOB_NOTES = f"""\
For any KubeRay version: submits to the long-lived RayCluster of infra/kuberay/raycluster.yaml
through its ClusterIP head Service. The Ray token comes from the Secret {RAY_TOKEN_SECRET} (key
auth_token), created by hand, never stored in this repository."""


# --- files ------------------------------------------------------------------------------------------


class SchedulePaths(NamedTuple):
    raycronjob: Path
    cronjob: Path
    crontab: Path


def write_schedule(out_dir: str | Path, pipeline: str, cron: str, *, name: str | None = None,
                   address: str = RAY_ADDRESS, image: str = CPU_IMAGE, gpu_image: str = GPU_IMAGE,
                   tracking_uri: str | None = TRACKING_URI, storage: str | None = None,
                   namespace: str = NAMESPACE, project_dir: str | Path = ".", local_address: str | None = None,
                   local_tracking_uri: str | None = None, local_storage: str | None = None, venv: str = ".venv",
                   entry_root: str | Path | None = None, extra_args: Sequence[str] = ()) -> SchedulePaths:
    """Write NAME.raycronjob.yaml, NAME.cronjob.yaml and NAME.crontab into `out_dir`; return their paths.

    `address`, `tracking_uri` and `storage` are the cluster's (the CronJob and RayCronJob); `local_address`,
    `local_tracking_uri` and `local_storage` the crontab line's (no address: it runs jobs/retrain.py on the
    machine itself), which runs in `project_dir` with `venv` (see `render_crontab_line`).
    """
    cron = validate_cron(cron)
    name = name or pipeline_name(pipeline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = k8s_name(name, limit=60)
    paths = SchedulePaths(out / f"{stem}.raycronjob.yaml", out / f"{stem}.cronjob.yaml", out / f"{stem}.crontab")
    rcj = render_raycronjob(pipeline, name, cron, image=image, gpu_image=gpu_image, tracking_uri=tracking_uri,
                            storage=storage, namespace=namespace, extra_args=extra_args)
    cj = render_cronjob(pipeline, name, cron, address=address, image=image, tracking_uri=tracking_uri,
                        storage=storage, namespace=namespace, extra_args=extra_args)
    line = render_crontab_line(pipeline, name, cron, project_dir=project_dir, address=local_address,
                               tracking_uri=local_tracking_uri, storage=local_storage, venv=venv,
                               entry_root=entry_root, extra_args=extra_args)
    paths.raycronjob.write_text(to_yaml(rcj, header=_header("KubeRay RayCronJob", pipeline, cron) + "\n"
                                        + RAYCRONJOB_NOTES))
    paths.cronjob.write_text(to_yaml(cj, header=_header("Kubernetes CronJob", pipeline, cron) + "\n" + CRONJOB_NOTES))
    paths.crontab.write_text(
        f"# deepgen: scheduled retraining of {pipeline} at '{cron}' (machine's local time).\n"
        f"# Install with: (crontab -l 2>/dev/null; cat {paths.crontab.name}) | crontab -\n{line}\n")
    return paths


# --- the examples under infra/ ---------------------------------------------------------------------

INFRA_PIPELINE = "pipelines/quickstart.yaml"
INFRA_NAME = "quickstart"
INFRA_CRON = "0 3 * * *"

RAYJOB_NOTES = """\
One pipeline run: KubeRay creates a Ray cluster (CPU head, autoscaled GPU workers), runs the
entrypoint once through a submitter Job, and deletes the cluster after the job (ray.io/v1 RayJob:
entrypoint, runtimeEnvYAML, rayClusterSpec, shutdownAfterJobFinishes, ttlSecondsAfterFinished,
submissionMode; checked against ray-project/kuberay ray-operator/apis/ray/v1/rayjob_types.go).
Token auth: authOptions.mode=token (KubeRay >= 1.5.1, Ray >= 2.52): the operator makes the token.
To run on the long-lived cluster instead, `deepgen submit` to it (see infra/README.md).
Another pipeline: python -m deepgen.schedule rayjob pipelines/OTHER.yaml > my-rayjob.yaml"""


def infra_files() -> dict[str, str]:
    """The generated files under infra/, by path relative to the repository root, with their text.

    `python -m deepgen.schedule infra` rewrites them; tests/test_infra.py checks they are current.
    """
    p, n, c = INFRA_PIPELINE, INFRA_NAME, INFRA_CRON
    how = "\nGenerated by `python -m deepgen.schedule infra` (tests/test_infra.py checks it is current)."
    return {
        "infra/kuberay/rayjob.yaml": to_yaml(
            render_rayjob(p, n), header=f"KubeRay RayJob: one run of {p}.\n" + RAYJOB_NOTES + how),
        "infra/kuberay/raycronjob.yaml": to_yaml(
            render_raycronjob(p, n, c),
            header=_header("KubeRay RayCronJob", p, c) + "\n" + RAYCRONJOB_NOTES + how),
        "infra/kubernetes/submit-cronjob.yaml": to_yaml(
            render_cronjob(p, n, c, storage=f"{RUNS_MOUNT}/ray"),
            header=_header("Kubernetes CronJob", p, c) + "\n" + CRONJOB_NOTES + how),
    }


# --- python -m deepgen.schedule --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepgen.schedule",
                                     description="Schedule helpers (the CLI's `deepgen schedule` writes the files).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("slot", help="print the slot (YYYY-MM-DDTHH:MMZ) of the latest tick at or before now")
    p.add_argument("--cron", required=True, help='five-field cron expression, e.g. "0 3 * * *"')
    p.add_argument("--local", action="store_true", help="read the schedule in local time (crontab), not UTC")
    p.add_argument("--now", help="a fixed time instead of the clock (ISO 8601; naive = UTC)")
    p = sub.add_parser("rayjob", help="print a RayJob manifest that runs one pipeline")
    p.add_argument("pipeline", help="pipeline YAML file, relative to the project root")
    p.add_argument("--image", default=CPU_IMAGE, help="head image (default %(default)s)")
    p.add_argument("--gpu-image", default=GPU_IMAGE, help="GPU worker image (default %(default)s)")
    p.add_argument("--tracking-uri", default=TRACKING_URI, help="MLflow server (default %(default)s)")
    p.add_argument("--storage", help="Ray Train storage path or URI (default: the pipeline's)")
    sub.add_parser("infra", help="rewrite the generated files under infra/ (run from the repository root)")
    args = parser.parse_args(argv)

    def command() -> int:
        if args.command == "rayjob":
            name = pipeline_name(args.pipeline)
            print(to_yaml(render_rayjob(args.pipeline, name, image=args.image, gpu_image=args.gpu_image,
                                        tracking_uri=args.tracking_uri, storage=args.storage)), end="")
            return 0
        if args.command == "infra":
            for rel, text in infra_files().items():
                Path(rel).parent.mkdir(parents=True, exist_ok=True)
                Path(rel).write_text(text)
                print(rel)
            return 0
        now = None
        if args.now:
            try:
                now = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
            except ValueError:
                raise ScheduleError(f"--now '{args.now}': not an ISO 8601 time") from None
            if now.tzinfo is None:
                now = now.replace(tzinfo=UTC)
        print(current_slot(args.cron, now, local=args.local))
        return 0

    return console.run_command(command)


if __name__ == "__main__":
    sys.exit(main())
