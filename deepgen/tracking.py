"""Every MLflow call of deepgen lives here: runs, metrics, pictures, the model registry and its aliases.

Default store: SQLite under the pipeline's runs folder; `MLFLOW_TRACKING_URI` overrides it (a shared
`mlflow server` on a cluster). Only the driver and rank 0 of a Ray Train run call into this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from deepgen.errors import RegistryError, first_line

CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_NAME_TAG = "deepgen.run_name"
PYFUNC_CODE = Path(__file__).with_name("mlflow_model.py")
MODEL_ARTIFACT = "model"


def tracking_uri_for(runs_dir: str | Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite file in the runs folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def configure(runs_dir: str | Path) -> str:
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    return configure_uri(tracking_uri_for(runs_dir))


def configure_uri(uri: str) -> str:
    """Point tracking and the registry at `uri` (a Tune trial's process receives it from the driver)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client() -> MlflowClient:
    return MlflowClient()


def filter_literal(value: str) -> str:
    """`value` as a string literal of an MLflow search filter.

    MLflow's filter parser strips the quotes around a value and knows no escapes (`'o''brien'` is searched
    for as `o''brien`), so the value is quoted with a quote it does not hold; one holding both quotes or a
    backslash (which ends the literal early) cannot be searched for at all and is refused."""
    if "\\" not in value:
        for quote in ("'", '"'):
            if quote not in value:
                return f"{quote}{value}{quote}"
    raise RegistryError(f"{value!r}: a name with both quote marks or a backslash cannot be looked up in MLflow")


NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _not_found(e: MlflowException) -> bool:
    return e.error_code in NOT_FOUND


# --- runs ------------------------------------------------------------------------------------------


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": "0.001"}; lists are kept as JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def start_or_resume_run(experiment: str, run_name: str, artifact_root: Path, params: dict[str, Any],
                        tags: dict[str, str], check_found=None) -> str:
    """The MLflow run of a Ray Train run name: created once, found again when the pipeline is rerun.
    `check_found(tags)` sees a found run's tags first and may refuse to resume it by raising."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(
        experiment, artifact_location=None if _remote_store() else (artifact_root / experiment).resolve().as_uri())
    found = c.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = {filter_literal(run_name)}",
                          max_results=1)
    if found:
        if check_found is not None:
            check_found(found[0].data.tags)
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    flat = flatten(params)
    items = list(flat.items())
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in items[i:i + 100]])
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


@contextlib.contextmanager
def finishing(run_id: str):
    """Ends the run FINISHED when the block completes, FAILED when it raises (Ctrl-C included), so no run
    is left RUNNING in the UI."""
    try:
        yield run_id
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id)


class EpochLogger:
    """Called by rank 0 after each epoch: per-epoch metrics with step = epoch.

    A resumed run starts after its last checkpointed epoch; epochs already in the history are skipped,
    so a restart does not duplicate metric history.

    Best effort: the metrics are a view of the run, the checkpoints are the run. A tracking server that
    does not answer is tried `attempts` times (each request failing fast instead of MLflow's minutes of
    backoff), then the epoch is kept for the next call and training goes on with a warning; raising here
    would end the worker, and with train.max_failures 0 lose the run.
    """

    def __init__(self, run_id: str, tracking_uri: str, attempts: int = 3, wait_s: float = 1.0,
                 timeout_s: int = 5):
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.attempts, self.wait_s, self.timeout_s = attempts, wait_s, timeout_s
        self.pending: list[dict[str, float]] = []
        logged = self._try(lambda: self.client.get_metric_history(run_id, "train_loss"), "read the logged epochs")
        self.logged_epochs = {m.step for m in logged or []}

    def __call__(self, metrics: dict[str, float]) -> None:
        if int(metrics["epoch"]) not in self.logged_epochs:
            self.pending.append(metrics)
        if not self.pending:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(m["epoch"])) for m in self.pending for k, v in m.items() if k != "epoch"]
        epochs = [int(m["epoch"]) for m in self.pending]
        if self._try(lambda: self._send(batch), f"log epoch {', '.join(map(str, epochs))}") is not None:
            self.logged_epochs.update(epochs)
            self.pending = []

    def log_images(self, images: dict[str, Any], step: int) -> None:
        """Pictures of this epoch (uint8 arrays), each under its key with the epoch as its step: the run
        page shows them with a step slider. Best effort, as the metrics."""
        for key, image in images.items():
            self._try(lambda image=image, key=key: self.client.log_image(self.run_id, image, key=key, step=step,
                                                                         synchronous=True),
                      f"log the image {key} of epoch {step}")

    def _send(self, batch: list[Metric]) -> bool:
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        return True

    def _try(self, call, what: str):
        """call()'s result, or None (with a warning) once every attempt failed."""
        for attempt in range(self.attempts):
            try:
                with quick_requests(self.timeout_s):
                    return call()
            except Exception as e:  # noqa: BLE001 - any failure to reach the server: requests, MLflow, OS
                error = e
                if attempt + 1 < self.attempts:
                    time.sleep(self.wait_s * 2 ** attempt)
        print(f"[deepgen] warning: MLflow did not answer {self.attempts} times, could not {what} "
              f"({first_line(error)[:200]}); training goes on, and the next epoch's log sends it too", flush=True)
        return None


def log_metrics(run_id: str, metrics: dict[str, float], prefix: str = "") -> None:
    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(prefix + k, float(v), now, 0) for k, v in metrics.items()])


def log_figure(run_id: str, figure, name: str) -> None:
    client().log_figure(run_id, figure, f"plots/{name}.png")


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


# --- registry --------------------------------------------------------------------------------------


@dataclass
class Registered:
    name: str
    version: str
    alias: str
    previous_champion: str | None
    reason: str


def find_version_for_run(name: str, run_name: str):
    """The version a pipeline run already registered, so a rerun does not register twice; None if it
    registered none. A registry that does not answer is an error, not "none": a rerun would register twice."""
    try:
        versions = client().search_model_versions(f"name = {filter_literal(name)}")
        for v in versions:
            if v.tags.get(RUN_NAME_TAG) == run_name:
                return client().get_model_version(name, v.version)  # search results carry no aliases
    except MlflowException as e:
        raise _registry_error(name, e) from None
    return None


SETTLED_TAG = "deepgen.settled"  # on a version: the alias its run's gate gave it, set once that alias moved


def settled(version) -> str | None:
    """How a registered version was settled (the aliases it holds, the alias its gate gave it, or its place
    in the champion history), or None if no alias was ever moved for it: only then may a rerun move one.

    So a rerun never undoes a person's decision: a champion rolled back or replaced, or a challenger
    overtaken, keeps the aliases it has now."""
    if version.aliases:
        return ", ".join(sorted(version.aliases))
    if version.tags.get(SETTLED_TAG):
        return f"{version.tags[SETTLED_TAG]} (since moved on)"
    if any(m.version == str(version.version) for m in _recorded_moves(version.name)[0]):
        return "champion (since moved on)"
    return None


# What the pyfunc imports (deepgen.mlflow_model, deepgen.export and the model code): pinned to the versions
# installed here, which trained the model, so `mlflow models serve` rebuilds the same environment.
SERVING_REQUIREMENTS = ("torch", "numpy", "pandas", "pyarrow", "mlflow", "pydantic", "pyyaml", "scikit-learn",
                        "scipy", "tokenizers")


def pinned_requirements() -> list[str]:
    """`name==version` of each serving requirement as installed (a local build tag such as +cpu dropped: the
    package index has the plain version)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_REQUIREMENTS]


def log_and_register(run_id: str, model_dir: Path, name: str, tags: dict[str, Any]):
    """Log the exported model as a models-from-code pyfunc (no pickle), with its signature, an input example
    and pinned requirements, and register a new version."""
    from deepgen.serving import load_exported

    predictor = load_exported(model_dir)
    example = predictor.example_input()
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # type-hint advice for PythonModel.predict; our input is a DataFrame
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(Path(__file__).parent)],
            pip_requirements=pinned_requirements(),
            signature=predictor.signature(example),
            input_example=example,
        )
    tags = {**tags, MODEL_SHA256_TAG: model_sha256(model_dir)}
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if not _not_found(e):
            raise _registry_error(name, e) from None
        c.create_registered_model(name, description="deepgen model; see version tags for threshold and lineage")
    # model_id: a tracking server refuses a `models:/m-...` source without it (a SQLite store does not)
    version = c.create_model_version(name, info.model_uri, run_id=run_id,
                                     tags={k: str(v) for k, v in tags.items()}, model_id=info.model_id)
    return _wait_ready(name, version.version)


MODEL_SHA256_TAG = "model_sha256"  # of the exported folder: weights, metadata, tokenizer


def model_sha256(model_dir: Path) -> str:
    """sha256 over every file of an exported model folder, by relative path and content, in path order."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def check_sha256(version, model_dir: Path) -> None:
    """Refuse a fetched model whose files are not the ones registered (the artifact store was written to
    since). Versions registered before the tag existed carry none and are not checked."""
    expected = (version.tags or {}).get(MODEL_SHA256_TAG)
    if expected and model_sha256(model_dir) != expected:
        raise RegistryError(f"{version.name}/{version.version}: the model's files in the artifact store do not "
                            f"match their registered {MODEL_SHA256_TAG}; they were changed after registration, so "
                            "deepgen does not load them (check who can write to the artifact store)")


def _wait_ready(name: str, version: str, timeout_s: float = 60):
    c = client()
    deadline = time.monotonic() + timeout_s
    while True:
        v = c.get_model_version(name, version)
        if v.status != "PENDING_REGISTRATION" or time.monotonic() > deadline:
            return v
        time.sleep(0.2)


def champion(name: str):
    """The version `champion` points at, None if there is none; a registry that does not answer raises
    (read as "no champion", the gate would promote anything)."""
    try:
        return client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if _not_found(e):
            return None
        raise _registry_error(name, e) from None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    client().set_model_version_tag(name, version, key, value)


# --- champion history ------------------------------------------------------------------------------
# MLflow keeps no history of aliases, so every move of `champion` goes through `move_champion`, which
# appends a ChampionMove to a JSON list in one registered-model tag. MLflow accepts such tag values up
# to 100,000 characters, but its SQL schema stores them as VARCHAR(5000) (SQLite ignores the width,
# MySQL and PostgreSQL do not), so the list keeps the newest moves that fit in 5,000 characters: about
# 35 with gate-length reasons, 12 with reasons at their 300-character cap; history and rollback reach
# back that far. The tag is read, extended and written back, so two moves at the same instant can lose
# one of their two events; the alias itself ends on the last one set.

HISTORY_TAG = "deepgen.champion_history"
HISTORY_MAX_CHARS = 5000
REASON_MAX_CHARS = 300


@dataclass
class ChampionMove:
    """`champion` moved to `version` at `at` (ms since the epoch; None if unknown) by `by`, because ..."""

    version: str
    at: int | None
    by: str
    action: str  # gate | promote | rollback | untracked (moved outside deepgen, found later)
    reason: str = ""
    alias: str = CHAMPION


def move_champion(name: str, version: str, by: str, reason: str, action: str = "promote") -> ChampionMove | None:
    """Point `champion` at `version` and record who and why; None if it already points there."""
    moves, current = _recorded_moves(name)
    version = _existing_version(name, version)
    if current == version:
        return None
    set_alias(name, CHAMPION, version)
    move = ChampionMove(version, int(time.time() * 1000), by, action, reason[:REASON_MAX_CHARS])
    _write_moves(name, [*moves, move])
    return move


def rollback_champion(name: str, by: str, reason: str = "") -> ChampionMove:
    """Move `champion` back to the version that held it before the current one."""
    stack = _champion_stack(_recorded_moves(name)[0])
    if len(stack) < 2:
        held = f"v{stack[0]} is the first champion on record" if stack else "no champion on record"
        raise RegistryError(f"{name}: no previous champion to roll back to ({held}); "
                            f"`deepgen models promote {name} VERSION` moves champion to any version")
    move = move_champion(name, stack[-2], by, reason, action="rollback")
    assert move is not None  # the stack never holds the same version twice in a row
    return move


def champion_history(name: str) -> list[dict[str, Any]]:
    """Who held `champion` when, oldest first: version, from and until (ms; None if not known), whether it
    still holds it, who moved it there and why."""
    moves, current = _recorded_moves(name)
    rows = []
    for i, m in enumerate(moves):
        last = i + 1 == len(moves)
        rows.append({"version": m.version, "alias": m.alias, "from": m.at, "until": None if last else moves[i + 1].at,
                     "current": last and current == m.version, "by": m.by, "action": m.action, "reason": m.reason})
    return rows


def _recorded_moves(name: str) -> tuple[list[ChampionMove], str | None]:
    """The recorded moves, plus an "untracked" one if `champion` was moved outside deepgen since; and
    the version `champion` points at now."""
    try:
        raw = client().get_registered_model(name).tags.get(HISTORY_TAG)
    except MlflowException as e:
        raise _registry_error(name, e) from None
    try:
        moves = [ChampionMove(**m) for m in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        raise RegistryError(f"{name}: tag {HISTORY_TAG} is not a champion history; delete the tag "
                            "(the next move starts a new history)") from None
    current = champion(name)
    current = None if current is None else str(current.version)
    if current is not None and (not moves or moves[-1].version != current):
        moves.append(ChampionMove(current, None, "unknown", "untracked", "champion set outside deepgen's record"))
    return moves, current


def _write_moves(name: str, moves: list[ChampionMove]) -> None:
    while True:  # drop the oldest moves until the list fits the tag column
        value = json.dumps([asdict(m) for m in moves], separators=(",", ":"))
        if len(value) <= HISTORY_MAX_CHARS or len(moves) <= 2:
            break
        moves = moves[1:]
    client().set_registered_model_tag(name, HISTORY_TAG, value)


def _champion_stack(moves: list[ChampionMove]) -> list[str]:
    """Replay the moves: a move pushes its version, a rollback pops back to the one before.

    So two rollbacks after v1 -> v2 -> v3 land on v1, not back on v3.
    """
    stack: list[str] = []
    for m in moves:
        if m.action == "rollback" and len(stack) > 1 and stack[-2] == m.version:
            stack.pop()
        else:  # also a rollback whose origin was trimmed from the history
            stack.append(m.version)
    return stack


def _existing_version(name: str, version: str) -> str:
    v = str(version).removeprefix("v")
    if not v.isdigit():
        raise RegistryError(f"{name}: version {version!r} is not a version number like 3")
    try:
        return str(client().get_model_version(name, v).version)
    except MlflowException:
        raise RegistryError(f"{name}: no version {v}; `deepgen models show {name}` shows the latest, "
                            "`deepgen models list` the models") from None


def resolve(ref: str):
    """`NAME@ALIAS`, `NAME/VERSION` or `NAME` (latest version) -> ModelVersion."""
    c = client()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return c.get_model_version_by_alias(name, alias)
        if "/" in ref:
            name, version = ref.rsplit("/", 1)
            return c.get_model_version(name, version)
        versions = c.search_model_versions(f"name = {filter_literal(ref)}")
    except MlflowException as e:
        raise _registry_error(ref, e) from None
    if not versions:
        raise RegistryError(f"{ref}: no such registered model; `deepgen models list` shows what is there")
    return max(versions, key=lambda v: int(v.version))


class NotADeepgenModel(RegistryError):
    """A registered version deepgen did not export (no deepgen-model.json)."""


@contextlib.contextmanager
def fetched_model_dir(version):
    """The exported model folder of a registered version, fetched through the registry into a temporary
    folder that is deleted when the block ends."""
    with tempfile.TemporaryDirectory(prefix="deepgen-model-") as dest:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=dest)
        found = list(Path(local).rglob("deepgen-model.json"))
        if not found:
            raise NotADeepgenModel(f"{version.name}/{version.version}: not a deepgen model (no deepgen-model.json)")
        check_sha256(version, found[0].parent)
        yield found[0].parent


def load_registered(version, family: str | None = None):
    """A registered version's predictor (deepgen.serving.load_exported), loaded into memory; the
    download is deleted. With `family`, a model of another family is refused in one line."""
    from deepgen.export import read_meta
    from deepgen.serving import load_exported

    with fetched_model_dir(version) as model_dir:
        found = read_meta(model_dir).family
        if family is not None and found != family:
            raise RegistryError(f"{version.name}/{version.version}: a {found} model, not {family}")
        return load_exported(model_dir)


def read_family(model_dir: Path) -> str:
    return json.loads((Path(model_dir) / "deepgen-model.json").read_text())["family"]


def _registry_error(ref: str, e: MlflowException) -> RegistryError:
    """Not found (say what is there) told apart from a registry that did not answer (say where to look)."""
    uri = mlflow.get_registry_uri()
    if _not_found(e):
        return RegistryError(f"{ref}: not found in the registry at {uri} ({first_line(e)}); "
                             "`deepgen models list` shows what is there")
    return RegistryError(f"the registry at {uri} did not answer ({first_line(e)[:200]}); check that the "
                         "tracking server is up and MLFLOW_TRACKING_URI / --tracking-uri names it")


@contextlib.contextmanager
def quick_requests(timeout_s: int = 10):
    """MLflow HTTP calls in the block fail at once instead of retrying with backoff for minutes: for a
    lookup that can go without its answer (a server this machine cannot reach)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def list_models() -> list[dict[str, Any]]:
    rows = []
    try:
        models = client().search_registered_models()
    except MlflowException as e:
        raise _registry_error("models", e) from None
    for m in models:
        pairs = m.aliases.items() if isinstance(m.aliases, dict) else ((a.alias, a.version) for a in m.aliases)
        aliases = {a: str(v) for a, v in pairs}  # the SQL store hands versions back as ints
        latest = max((int(v.version) for v in m.latest_versions), default=0)
        rows.append({"name": m.name, "latest_version": latest, "aliases": aliases})
    return rows


def describe_version(v) -> dict[str, Any]:
    return {"name": v.name, "version": str(v.version), "aliases": list(v.aliases or []), "run_id": v.run_id,
            "status": v.status, "created": v.creation_timestamp, "tags": dict(v.tags)}


GIT_COMMIT_ENV = "DEEPGEN_GIT_COMMIT"  # set where there is no checkout: by `deepgen submit`, or the image build


def git_commit() -> str:
    """The deepgen commit that runs: the checkout's HEAD, else $DEEPGEN_GIT_COMMIT, else "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(GIT_COMMIT_ENV) or "unknown"


def _remote_store() -> bool:
    return mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks"))


