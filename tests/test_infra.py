"""infra/: every file parses, holds what its kind needs, names real entrypoints, images and commands of
this project, exposes nothing outside the cluster, and carries no secret. No cluster, no Docker, no Ray."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepgen import __version__, schedule

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
YAML_FILES = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
DOCKERFILE = INFRA / "Dockerfile"
LAUNCHER = INFRA / "cluster-launcher.yaml"

EXPECTED = {
    "infra/kuberay/raycluster.yaml", "infra/kuberay/rayjob.yaml", "infra/kuberay/raycronjob.yaml",
    "infra/kubernetes/submit-cronjob.yaml", "infra/cluster-launcher.yaml", "infra/mlflow/mlflow.yaml",
    "infra/Dockerfile", "infra/README.md",
}

# Entrypoints and subcommands the owner is adding in parallel with these files (the brief names them):
# `python jobs/retrain.py PIPELINE (--slot SLOT | --cron CRON) [--storage S]` and `deepgen submit` /
# `deepgen schedule`. Drop a name from these sets once it exists; the checks then hold it to the tree.
PIPELINE_SUBCOMMANDS = {"prepare", "train", "run", "tune", "submit", "schedule"}

# What each kind must hold (dotted paths; `a|b` = either).
REQUIRED = {
    ("v1", "PersistentVolumeClaim"): ["spec.accessModes", "spec.resources.requests.storage"],
    ("v1", "ServiceAccount"): [],
    ("v1", "ConfigMap"): ["data"],
    ("v1", "Service"): ["spec.selector", "spec.ports"],
    ("apps/v1", "Deployment"): ["spec.selector.matchLabels", "spec.template.spec.containers"],
    ("batch/v1", "CronJob"): ["spec.schedule", "spec.jobTemplate.spec.template.spec.containers",
                              "spec.jobTemplate.spec.template.spec.restartPolicy"],
    ("networking.k8s.io/v1", "NetworkPolicy"): ["spec.podSelector"],
    ("ray.io/v1", "RayCluster"): ["spec.headGroupSpec.template.spec.containers", "spec.workerGroupSpecs"],
    ("ray.io/v1", "RayJob"): ["spec.entrypoint", "spec.rayClusterSpec|spec.clusterSelector"],
    ("ray.io/v1", "RayCronJob"): ["spec.schedule", "spec.jobTemplate.entrypoint",
                                  "spec.jobTemplate.rayClusterSpec|spec.jobTemplate.clusterSelector"],
}

SECRETISH_ENV = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL|STORE_URI|DB_URI|DATABASE_URL", re.I)
LITERAL_SECRETS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                                           # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(?<![a-z0-9_])(password|passwd|secret|api_key|apikey|access_key)\s*[:=]\s*[\"']?(?!\$|\{\{)"
               r"[^\s\"'#,}]{6,}"),
    re.compile(r"(?i)secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}"),     # AWS secret access key
    re.compile(r"ghp_[A-Za-z0-9]{30,}|xox[abp]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9]{20,}"),
]
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^:/\s@'\"]+):([^@\s'\"]+)@")


# --- helpers --------------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in YAML_FILES:
        if path == LAUNCHER:
            continue
        for doc in docs_of(path):
            yield rel(path), doc


def get(doc: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of every pod template in a manifest (Ray's head and worker groups included)."""
    for node in walk(doc):
        if isinstance(node, dict) and isinstance(node.get("containers"), list):
            yield from node["containers"]


def gpus(container: dict[str, Any]) -> int:
    return int((get(container, "resources.limits") or {}).get("nvidia.com/gpu", 0))


def ray_cluster_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = doc.get("kind")
    if kind == "RayCluster":
        yield doc["spec"]
    elif kind == "RayJob" and "rayClusterSpec" in doc["spec"]:
        yield doc["spec"]["rayClusterSpec"]
    elif kind == "RayCronJob" and "rayClusterSpec" in doc["spec"]["jobTemplate"]:
        yield doc["spec"]["jobTemplate"]["rayClusterSpec"]


def commands_in(text: str) -> Iterator[list[str]]:
    """The simple commands of a shell text: `$(...)` substitutions, `&&`/`;` lists, no redirections,
    no leading `VAR=value` assignments or `exec`."""
    subst = re.compile(r"\$\$?\(([^()]*)\)")
    pieces = [re.sub(subst, "SUBST", text), *subst.findall(text)]
    for piece in pieces:
        for simple in re.split(r"&&|\|\||;", piece):
            words = shlex.split(simple)
            while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "exec"):
                words = words[1:]
            for i, w in enumerate(words):
                if w.startswith(">") or w.startswith("2>") or w == "|":
                    words = words[:i]
                    break
            if words:
                yield words


def all_commands() -> Iterator[tuple[str, list[str]]]:
    """Every command line that infra/ (and what deepgen.schedule renders) would run."""
    for where, doc in k8s_docs():
        for text in (get(doc, "spec.entrypoint"), get(doc, "spec.jobTemplate.entrypoint")):
            if text:
                yield from ((where, c) for c in commands_in(text))
        for c in containers(doc):
            argv = [*c.get("command", []), *c.get("args", [])]
            if argv[:2] in (["sh", "-c"], ["bash", "-c"], ["/bin/sh", "-c"]):
                yield from ((where, cmd) for cmd in commands_in(argv[2].replace("$$", "$")))
            elif argv:
                yield where, [str(a) for a in argv]
    launcher = yaml.safe_load(LAUNCHER.read_text())
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        for text in launcher.get(key) or []:
            yield from ((rel(LAUNCHER), c) for c in commands_in(text))
    line = schedule.render_crontab_line("pipelines/quickstart.yaml", "quickstart", "0 3 * * *",
                                        address="http://127.0.0.1:8265")
    yield from (("crontab line", c) for c in commands_in(line.split(" ", 5)[5]))
    line = schedule.render_crontab_line("pipelines/quickstart.yaml", "quickstart", "0 3 * * *")
    yield from (("crontab line (local)", c) for c in commands_in(line.split(" ", 5)[5]))


def package_source(module: str, relpath: str) -> str:
    """Text of a file inside an installed package, found without importing the package (fast)."""
    spec = importlib.util.find_spec(module)
    assert spec and spec.origin, f"{module} is not installed"
    return (Path(spec.origin).parent / relpath).read_text()


def has_option(click_source: str, flag: str) -> bool:
    """Whether a click command's source declares `flag` (also as half of "--flag/--no-flag")."""
    return re.search(rf'["/]{re.escape(flag)}["/]', click_source) is not None


def deepgen_subcommands() -> set[str]:
    from deepgen.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices)


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not buf:
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        if buf.strip():
            op, _, rest = buf.strip().partition(" ")
            lines.append((op.upper(), rest.strip()))
        buf = ""
    return lines


def dockerfile_args() -> dict[str, str]:
    out = {}
    for op, rest in dockerfile_instructions():
        if op == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            out[k] = v.strip('"')
    return out


def image_variants() -> set[str]:
    """The TORCH_VARIANT values the Dockerfile's `case` accepts."""
    run = " ".join(rest for op, rest in dockerfile_instructions() if op == "RUN" and "TORCH_VARIANT" in rest)
    return set(re.findall(r"\b([a-z]+)\)\s", run)) - {"esac"}


# --- every file -----------------------------------------------------------------------------------


def test_the_expected_files_are_there():
    present = {rel(p) for p in INFRA.rglob("*") if p.is_file()}
    assert EXPECTED <= present, EXPECTED - present


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_yaml_file_parses_into_mappings(path):
    docs = docs_of(path)
    assert docs, f"{rel(path)}: no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_generated_files_are_current():
    for path, text in schedule.infra_files().items():
        assert (ROOT / path).read_text() == text, f"{path} is stale: run `python -m deepgen.schedule infra`"


def test_each_kind_holds_what_it_needs():
    seen = set()
    for where, doc in k8s_docs():
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert key in REQUIRED, f"{where}: unexpected {key}"
        seen.add(key[1])
        name = get(doc, "metadata.name")
        assert name and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, (where, name)
        assert get(doc, "metadata.namespace") == schedule.NAMESPACE, where
        for needed in REQUIRED[key]:
            assert any(get(doc, alt) for alt in needed.split("|")), f"{where}: {key[1]} {name} lacks {needed}"
        for c in containers(doc):
            assert c.get("name") and c.get("image"), f"{where}: a container lacks name or image"
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Deployment", "Service"} <= seen


def test_ray_clusters_have_a_cpu_head_and_a_gpu_worker_group():
    ray_version = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    n = 0
    for where, doc in k8s_docs():
        for spec in ray_cluster_specs(doc):
            n += 1
            assert spec["rayVersion"] == ray_version == schedule.RAY_VERSION, where
            head = spec["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
            (head_c,) = head["template"]["spec"]["containers"]
            assert "nvidia.com/gpu" not in get(head_c, "resources.limits"), f"{where}: the head should be CPU-only"
            gpu_groups = [g for g in spec["workerGroupSpecs"] if gpus(g["template"]["spec"]["containers"][0]) > 0]
            assert gpu_groups, f"{where}: no GPU worker group"
            for g in gpu_groups:
                assert g["groupName"] and 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], where
            for group in [head, *spec["workerGroupSpecs"]]:
                pod = group["template"]["spec"]
                mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
                claims = {v["name"]: get(v, "persistentVolumeClaim.claimName") for v in pod.get("volumes", [])}
                assert claims.get(mounts.get(schedule.RUNS_MOUNT)) == schedule.RUNS_VOLUME_CLAIM, \
                    f"{where}: every Ray pod mounts the shared runs volume at {schedule.RUNS_MOUNT}"
                assert all(c.get("workingDir") == schedule.APP_DIR for c in pod["containers"]), where
    assert n == 3  # the RayCluster, the RayJob's and the RayCronJob's


def test_raycronjob_matches_the_kuberay_16_schema():
    (doc,) = docs_of(INFRA / "kuberay" / "raycronjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    assert set(doc["spec"]) <= {"schedule", "jobTemplate", "suspend"}
    assert schedule.validate_cron(doc["spec"]["schedule"]) == doc["spec"]["schedule"]
    rayjob_fields = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                     "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
                     "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                     "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
    assert set(doc["spec"]["jobTemplate"]) <= rayjob_fields      # RayJob fields, no `spec:` wrapper
    (rayjob,) = docs_of(INFRA / "kuberay" / "rayjob.yaml")
    assert set(rayjob["spec"]) <= rayjob_fields
    assert rayjob["spec"]["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert "jobId" not in doc["spec"]["jobTemplate"], "a fixed jobId would collide on the second tick"


def test_cluster_launcher_is_a_valid_ray_config_with_a_gpu_worker_type():
    import jsonschema

    config = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(config, json.loads(package_source("ray", "autoscaler/ray-schema.json")))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))              # CPU head
    assert any(w["node_config"]["InstanceType"].startswith(("g4", "g5", "g6", "p3", "p4", "p5"))
               and w["max_workers"] >= 1 for w in workers)
    setup = " ".join(config["setup_commands"])
    assert "-c constraints.txt" in setup and "pip install" in setup
    assert "." in config["file_mounts"].values()                                       # the working copy


# --- entrypoints, commands, images ----------------------------------------------------------------


def test_entrypoints_name_real_files_modules_and_commands():
    subcommands = deepgen_subcommands()
    ray_cli = package_source("ray", "scripts/scripts.py")
    mlflow_cli = package_source("mlflow", "cli/__init__.py") + package_source("mlflow", "utils/cli_args.py")
    checked = set()
    for where, words in all_commands():
        prog = Path(words[0]).name
        if prog in ("python", "python3"):
            if words[1] == "-m":
                assert importlib.util.find_spec(words[2]), f"{where}: no module {words[2]}"
                if words[2] == "deepgen.schedule":
                    assert words[3] in ("slot", "rayjob", "infra"), where
                    assert schedule.main([*words[3:], "--now", "2026-11-27T03:00"]) == 0
                checked.add(f"-m {words[2]}")
                continue
            script = words[1]
            assert re.fullmatch(r"jobs/[a-z_]+\.py", script), f"{where}: {script}"
            assert (ROOT / script).is_file(), f"{where}: {script} is not in the repo"
            assert (ROOT / words[2]).is_file() and words[2].startswith("pipelines/"), f"{where}: {words[2]}"
            checked.add(script)
        elif prog == "deepgen":
            assert words[1] in subcommands, f"{where}: deepgen has no subcommand {words[1]}"
            if words[1] in PIPELINE_SUBCOMMANDS:
                assert (ROOT / words[2]).is_file(), f"{where}: {words[2]} is not in the repo"
            checked.add(f"deepgen {words[1]}")
        elif prog == "ray":
            assert words[1] in ("start", "stop"), where
            for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                assert has_option(ray_cli, flag), f"{where}: ray {words[1]} has no {flag}"
        elif prog == "mlflow":
            assert words[1] == "server", where
            for flag in (w for w in words[2:] if w.startswith("--")):
                assert has_option(mlflow_cli, flag), f"{where}: mlflow server has no {flag}"
            checked.add("mlflow server")
        elif prog == "pip":
            assert "-c" in words and "constraints.txt" in words, f"{where}: pip without the constraints"
        else:
            assert prog in ("cd", "ulimit", "mkdir"), f"{where}: unexpected command {words}"
    assert {"jobs/run_pipeline.py", "jobs/retrain.py", "deepgen submit", "-m deepgen.schedule",
            "mlflow server"} <= checked


def test_images_are_the_ones_infra_dockerfile_builds():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = pyproject["project"]["version"]
    assert version == __version__
    variants = image_variants()
    assert variants == {"cpu", "cuda"}
    allowed = {f"{schedule.IMAGE_REPOSITORY}:{version}-{v}" for v in variants}
    assert {schedule.CPU_IMAGE, schedule.GPU_IMAGE} == allowed
    for where, doc in k8s_docs():
        for c in containers(doc):
            assert c["image"] in allowed, f"{where}: {c['image']} is not built by infra/Dockerfile"
            assert c["image"].endswith("-cuda") == (gpus(c) > 0), f"{where}: {c['name']} uses {c['image']}"
    docker = yaml.safe_load(LAUNCHER.read_text())["docker"]
    assert {docker["head_image"], docker["worker_image"]} == allowed


def test_dockerfile_builds_from_python_311_slim_with_the_constraints_as_a_non_root_user():
    ins = dockerfile_instructions()
    args = dockerfile_args()
    (base,) = [rest for op, rest in ins if op == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base == "python:3.11-slim"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    workdir = [rest for op, rest in ins if op == "WORKDIR"][-1]
    assert workdir == schedule.APP_DIR
    for op, rest in ins:
        if op == "COPY":
            *sources, _dest = [w for w in rest.split() if not w.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        if op == "RUN" and "pip install" in rest:
            for install in re.findall(r"pip install[^;&|]*", rest):
                assert "-c constraints.txt" in install, f"pip install without the constraints: {install}"
        if op in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
            assert not [n for n in names if SECRETISH_ENV.search(n)], f"{op} {rest}: no secrets in the image"
    copied = {w for op, rest in ins if op == "COPY" for w in rest.split()}
    assert {"jobs", "pipelines", "deepgen", "constraints.txt"} <= copied
    # `deepgen submit` in the image (the scheduled CronJob) stages jobs/ from beside the package: an
    # editable install of /app, with jobs/ copied in before it
    [install] = [i for i, (op, rest) in enumerate(ins) if op == "RUN" and re.search(r"pip install .* \.( |$)", rest)]
    assert re.search(r"pip install -c constraints.txt -e \. ", ins[install][1]), ins[install][1]
    jobs_copy = next(i for i, (op, rest) in enumerate(ins) if op == "COPY" and " jobs " in f" {rest} ")
    assert jobs_copy < install
    assert "wget" in " ".join(rest for op, rest in ins if op == "RUN"), "KubeRay's probes call wget"


# --- exposure ---------------------------------------------------------------------------------------


def test_nothing_is_exposed_outside_the_cluster():
    for where, doc in k8s_docs():
        assert doc["kind"] != "Ingress", where
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{where}: {doc['metadata']['name']}"
            assert not any("nodePort" in p for p in doc["spec"]["ports"]), where
        for spec in ray_cluster_specs(doc):
            assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", where
        for node in walk(doc):
            if isinstance(node, dict):
                assert not node.get("hostNetwork"), where
                for port in node.get("ports", []) if isinstance(node.get("ports"), list) else []:
                    assert not (isinstance(port, dict) and "hostPort" in port), where
    services = {doc["metadata"]["name"]: doc for _, doc in k8s_docs() if doc["kind"] == "Service"}
    mlflow_svc = services["deepgen-mlflow"]
    assert [p["port"] for p in mlflow_svc["spec"]["ports"]] == [5000]
    text = " ".join(schedule.to_yaml(d) for _, d in k8s_docs())
    assert "LoadBalancer" not in text and "NodePort" not in text
    launcher = yaml.safe_load(LAUNCHER.read_text())
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_addresses_agree_across_files():
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, doc in k8s_docs():
        by_kind.setdefault(doc["kind"], []).append(doc)
    (cluster,) = by_kind["RayCluster"]
    assert cluster["metadata"]["name"] == schedule.RAY_CLUSTER
    assert schedule.RAY_ADDRESS == f"http://{schedule.RAY_CLUSTER}-head-svc:8265"
    (deployment,) = by_kind["Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"                 # inside the pod; the Service is ClusterIP
    assert args[args.index("--port") + 1] == "5000"
    assert schedule.TRACKING_URI == "http://deepgen-mlflow:5000"
    allowed_hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert "deepgen-mlflow:5000" in allowed_hosts and "localhost:*" in allowed_hosts
    (pvc,) = by_kind["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == schedule.RUNS_VOLUME_CLAIM and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for _, doc in k8s_docs():
        for c in containers(doc):
            for env in c.get("env", []):
                if env["name"] == "MLFLOW_TRACKING_URI":
                    assert env["value"] == schedule.TRACKING_URI
    for cronjob in by_kind["CronJob"]:
        text = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][2]
        assert f"--address {schedule.RAY_ADDRESS}" in text


# --- secrets ----------------------------------------------------------------------------------------


def _all_env(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for node in walk(doc):
        if isinstance(node, dict) and isinstance(node.get("env"), list):
            yield from (e for e in node["env"] if isinstance(e, dict) and "name" in e)


def test_no_file_holds_a_literal_secret():
    texts = {rel(p): p.read_text() for p in INFRA.rglob("*") if p.is_file()}
    texts["deepgen/schedule.py"] = (ROOT / "deepgen" / "schedule.py").read_text()
    for where, text in texts.items():
        for pattern in LITERAL_SECRETS:
            assert not pattern.search(text), f"{where}: looks like a secret: {pattern.search(text).group(0)!r}"
        for _user, password in URL_CREDENTIALS.findall(text):
            assert re.fullmatch(r"[A-Z_]+|\$\(?\{?\w+\}?\)?", password), f"{where}: credentials in a URL"
    for where, doc in k8s_docs():
        assert doc["kind"] != "Secret", f"{where}: Secrets are created by hand (see infra/README.md), not stored"


def test_secrets_are_referenced_never_inlined():
    referenced = set()
    for where, doc in k8s_docs():
        for env in _all_env(doc):
            if SECRETISH_ENV.search(env["name"]):
                assert "value" not in env, f"{where}: {env['name']} has a literal value"
                ref = get(env, "valueFrom.secretKeyRef")
                assert ref and ref.get("name") and ref.get("key"), f"{where}: {env['name']} is not a secretKeyRef"
                referenced.add(ref["name"])
        for node in walk(doc):
            if isinstance(node, dict) and isinstance(node.get("envFrom"), list):
                referenced |= {get(e, "secretRef.name") for e in node["envFrom"] if get(e, "secretRef.name")}
    assert referenced == {schedule.RAY_TOKEN_SECRET, "deepgen-mlflow-db", "deepgen-mlflow-s3",
                          schedule.MLFLOW_AUTH_SECRET}
    readme = (INFRA / "README.md").read_text()
    for name in referenced:
        assert f"create secret generic {name}" in readme, f"infra/README.md does not say how to create {name}"
    # The token of the long-lived RayCluster reaches every Ray process, the autoscaler included.
    (cluster,) = [d for _, d in k8s_docs() if d["kind"] == "RayCluster"]
    names = lambda envs: {e["name"] for e in envs}  # noqa: E731
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= names(cluster["spec"]["autoscalerOptions"]["env"])
    for c in containers(cluster):
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= names(c["env"]), c["name"]
    for _, doc in k8s_docs():
        if doc["kind"] in ("RayJob", "RayCronJob"):
            (spec,) = ray_cluster_specs(doc)
            assert spec["authOptions"] == {"mode": "token"}


# --- the tracking server: basic auth, reachable from the Ray pods only --------------------------------


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in ray_cluster_specs(doc):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            yield group["template"]["spec"]


def test_the_tracking_server_runs_basic_auth_with_credentials_from_a_secret():
    (deployment,) = [d for _, d in k8s_docs() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["args"][server["args"].index("--app-name") + 1] == "basic-auth"
    env = {e["name"]: e for e in server["env"]}
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")):
        assert get(env[name], "valueFrom.secretKeyRef") == {"name": schedule.MLFLOW_AUTH_SECRET, "key": key}, name
    config_dir = env["MLFLOW_AUTH_CONFIG_PATH"]["value"].rsplit("/", 1)[0]
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_map,) = [d for _, d in k8s_docs() if d["kind"] == "ConfigMap"]
    assert volumes[mounts[config_dir]]["configMap"]["name"] == config_map["metadata"]["name"]
    ini = config_map["data"][env["MLFLOW_AUTH_CONFIG_PATH"]["value"].rsplit("/", 1)[1]]
    assert "default_permission = NO_PERMISSIONS" in ini
    user_store = re.search(r"database_uri = sqlite:///(/\S+)/basic_auth.db", ini).group(1)
    assert "emptyDir" in volumes[mounts[user_store]]  # writable by the non-root server


def test_only_ray_pods_reach_the_tracking_server_and_they_carry_its_credentials_not_a_cluster_token():
    (policy,) = [d for _, d in k8s_docs() if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchExpressions": [
        {"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]}]}}]
    ray_docs = [(w, d) for w, d in k8s_docs() if d["kind"] in ("RayCluster", "RayJob", "RayCronJob")]
    assert len(ray_docs) == 3
    for where, doc in ray_docs:
        for pod in _pod_specs(doc):
            assert pod["automountServiceAccountToken"] is False, where
            for c in pod["containers"]:
                env = {e["name"]: e for e in c["env"]}
                for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
                    assert get(env[name], "valueFrom.secretKeyRef") == {"name": schedule.MLFLOW_AUTH_SECRET,
                                                                        "key": key}, (where, c["name"], name)
