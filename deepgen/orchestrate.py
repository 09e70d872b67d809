"""The steps of a pipeline, in order: prepare -> train -> evaluate -> register.

This is the one module that builds Ray things (the prepare task, the `TorchTrainer`). Each step skips
work whose output is already there and current: an unchanged dataset is not rewritten, a finished run
name resumes at its last checkpoint, and a run that already registered a version does not register again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deepgen import tracking
from deepgen.config import NAME_PATTERN, PipelineSpec, TextSpec
from deepgen.data.dataset import check_normal_rows, normal_mask, normal_row_count, split_bytes, split_path
from deepgen.data.manifest import Manifest
from deepgen.data.prepare import prepare_dataset
from deepgen.errors import DeepgenError, RegistryError, TrainingError
from deepgen.files import copy_into_place
from deepgen.locks import run_lock
from deepgen.tasks import Evaluation, Task, build_task, task_class


def say(message: str) -> None:
    from deepgen.console import say as on_screen

    on_screen(message)


# --- Ray -------------------------------------------------------------------------------------------


def ensure_ray(spec: PipelineSpec | None = None) -> None:
    """Connect to `RAY_ADDRESS` if set, else start a local Ray sized for the spec's workers.

    Ray Data needs a CPU of its own to read Parquet while every training worker holds one, so a local
    instance gets at least workers * cpus_per_worker + 1 logical CPUs, times the concurrent Tune trials.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        from deepgen.ray_access import init_remote

        init_remote(os.environ["RAY_ADDRESS"])
        return
    per_run = 1.0 + (spec.scaling.num_workers * spec.scaling.cpus_per_worker if spec else 1.0)
    need = per_run * (spec.tune.max_concurrent_trials if spec and spec.tune else 1)
    # The dashboard (on this machine only) serves the State API, which Ray Train's placement-group cleaner
    # needs: without it, a trainer that Tune stops (ASHA) keeps its workers' CPUs and a sweep stalls.
    start_local_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=True,
                    dashboard_host="127.0.0.1")


def start_local_ray(**init_kwargs) -> None:
    """`ray.init(**init_kwargs)` for a new local instance, tried again where its node missed Ray's start-up wait.

    Raises ClusterAccessError (one line) when it cannot start."""
    import ray

    from deepgen.ray_access import ClusterAccessError

    for attempt in range(1, RAY_START_TRIES + 1):
        before = _child_pids()
        try:
            ray.init(**init_kwargs)
            return
        except Exception as e:  # noqa: BLE001 - a node that timed out starting, a port taken, ...: one line
            slow = "timed out during startup" in str(e)
            _reap_children(_child_pids() - before)
            if slow and attempt < RAY_START_TRIES:
                say(f"Ray's node did not start within Ray's fixed 30 s (a busy machine?); "
                    f"trying again ({attempt + 1} of {RAY_START_TRIES})")
                continue
            busy = (f" (Ray gives a new node 30 s to start and it failed {RAY_START_TRIES} times: "
                    "on a busy machine, try again when it is quieter)") if slow else ""
            raise ClusterAccessError(
                f"could not start a local Ray: {' '.join(str(e).split())[:300]}{busy}") from None


# Ray waits a fixed 30 s for a new node's raylet to register; on a loaded machine that can run out once.
RAY_START_TRIES = 3


def _child_pids() -> set[int]:
    import ray  # noqa: F401 - puts the psutil that Ray ships on the path

    # isort: split
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _reap_children(pids: set[int]) -> None:
    """Stop the processes a failed `ray.init` left behind (its GCS, raylet, dashboard), so a retry starts
    clean and nothing lingers. `ray.init` raises before it keeps a handle on them, so `ray.shutdown` cannot."""
    import ray

    # isort: split
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):  # each may have exited by now
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    for proc in psutil.wait_procs(procs, timeout=10)[1]:  # still alive after 10 s
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    ray.shutdown()  # clears what the failed init set up in this process (its session, its worker state)


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


# --- inputs from the registry ----------------------------------------------------------------------


def resolve_inputs(spec: PipelineSpec) -> PipelineSpec:
    """The spec with registry references replaced by local folders.

    A fine-tuning pipeline names its pretrained encoder as `NAME@ALIAS`, `NAME/VERSION` or a folder; the
    registered version is fetched once into RUNS_DIR/pretrained/NAME-vVERSION (a stable path, so a rerun
    keeps its run name and resumes), and its tokenizer becomes the one the labelled text is prepared with.
    A local Hugging Face BERT folder is converted once into RUNS_DIR/pretrained/hf-FOLDER-HASH (deepgen.hf_bert).
    """
    from deepgen.data.tokenizer import TOKENIZER_FILE

    ref = getattr(spec.model, "pretrained", None)
    if not ref:
        return spec
    local = Path(ref).expanduser()
    if not local.exists():
        if "@" not in ref and "/" not in ref:
            raise DeepgenError(f"model.pretrained: {ref!r} is neither a folder nor NAME@ALIAS / NAME/VERSION")
        tracking.configure(spec.runs_dir)
        version = tracking.resolve(ref)
        if not NAME_PATTERN.fullmatch(version.name):  # registered outside deepgen: it names a folder here
            raise DeepgenError(f"model.pretrained: registered model name {version.name!r} cannot name a folder")
        local = spec.runs_dir / "pretrained" / f"{version.name}-v{version.version}"
        if not (local / TOKENIZER_FILE).is_file():
            with tracking.fetched_model_dir(version) as fetched:
                if tracking.read_family(fetched) != "bert_encoder":
                    raise DeepgenError(f"model.pretrained: {ref} is a {tracking.read_family(fetched)} model, "
                                       "not a bert_pretrain one")
                copy_into_place(fetched, local)  # an interrupted fetch leaves no half folder
        say(f"pretrained encoder: {ref} -> {version.name} v{version.version}")
    from deepgen import hf_bert

    if hf_bert.is_hf_checkpoint(local):  # config.json + weights + vocab.txt: converted once, then as our own
        local = hf_bert.converted(local, spec.runs_dir / "pretrained")
        say(f"pretrained encoder: {ref} (Hugging Face) -> {local}")
    local = local.absolute()
    if not (local / TOKENIZER_FILE).is_file():
        raise DeepgenError(f"model.pretrained: {local} has no {TOKENIZER_FILE}; give an exported bert_pretrain "
                           "model folder, a pretraining checkpoint, or NAME@ALIAS")
    from deepgen.tasks.bert import pretrained_config

    text = spec.data.text or TextSpec()
    update = {"tokenizer": str(local / TOKENIZER_FILE)}
    if "max_len" not in text.model_fields_set:  # unset: rows as long as the encoder has positions for
        update["max_len"] = pretrained_config(local)["max_len"]
    else:  # set: checked now, a one-line error instead of a shape error in the workers
        pretrained_config(local, text.max_len)
    text = text.model_copy(update=update)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"pretrained": str(local)}),
                                   "data": spec.data.model_copy(update={"text": text})})


# --- prepare ---------------------------------------------------------------------------------------


def prepare(spec: PipelineSpec) -> Manifest:
    """Run the prepare step as a Ray task (on a cluster it runs where the data is reachable)."""
    import ray

    ensure_ray(spec)
    say(f"prepare: reading {spec.data.source.kind} source")
    task = ray.remote(max_retries=0)(prepare_dataset)
    try:
        manifest, _ = ray.get(task.remote(spec.data.with_absolute_paths(), str(spec.data_dir), say))
    except ray.exceptions.RayTaskError as e:
        raise _user_error(e) from None
    prepare_data_aids(spec, manifest)
    return manifest


DATA_AID_TASK = "deepgen-data-aid"


def prepare_data_aids(spec: PipelineSpec, manifest: Manifest) -> None:
    """What the model's task computes once per prepared data set (a GAN's judge: Task.data_aid_missing),
    as one Ray task with the trainer's CPUs, capped at the largest node's, or one GPU where the workers use
    GPUs; before the workers start, so no rank waits on another's side job. Cached beside the data, so a
    later run, a tune trial or a resumed one finds it done."""
    import ray

    if task_class(spec.model.kind).data_aid_missing is Task.data_aid_missing:
        return  # this family computes nothing per data set (build no task: some read files to build)
    what = build_task(spec, manifest).data_aid_missing(spec.data_dir)
    if what is None:
        return
    s = spec.scaling
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    cpus = max(1, min(int(s.num_workers * s.cpus_per_worker), int(max(node_cpus, default=0)) or 1))
    where = "1 GPU" if s.use_gpu else f"{cpus} CPU{'s' if cpus > 1 else ''}"
    say(f"prepare: training {what}, once for this data set, on {where}")

    @ray.remote(num_cpus=cpus, num_gpus=1 if s.use_gpu else 0, max_retries=0)
    def make(spec: PipelineSpec, manifest: Manifest, threads: int, device: str) -> None:
        import torch

        torch.set_num_threads(threads)
        build_task(spec, manifest).make_data_aid(spec.data_dir, device)

    try:
        ray.get(make.options(name=DATA_AID_TASK).remote(spec.with_absolute_paths(), manifest, cpus,
                                                        "cuda" if s.use_gpu else "cpu"))
    except ray.exceptions.RayTaskError as e:
        raise _user_error(e) from None


def _user_error(e: Exception) -> Exception:
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, DeepgenError) else e


# --- train -----------------------------------------------------------------------------------------


def build_trainer(spec: PipelineSpec, manifest: Manifest, mlflow_run_id: str | None, tracking_uri: str | None,
                  callbacks: tuple = (), keep_best: tuple[str, str] | None = None):
    """A TorchTrainer for the spec: Ray Data splits (train filtered to normal rows), ScalingConfig,
    per-epoch checkpoints kept by CheckpointConfig, and the run name that makes a rerun resume.

    `keep_best=(metric, mode)` keeps the best-scoring checkpoints instead of the newest (Ray always keeps
    the latest one too, so resuming still works): a sweep registers a trial's best epoch, not its last."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from deepgen.train.loop import train_loop_per_worker

    _quiet_ray_data()
    anomaly_spec = spec.anomaly
    train_rows = count_train_rows(spec, manifest)  # a one-line error here, not a worker's KeyError

    def keep_normal(batch):  # pyarrow batch -> normal rows only
        return batch.filter(normal_mask(batch.column("label"), anomaly_spec, batch.num_rows)) \
            if "label" in batch.column_names else batch

    # validation rows are normal ones only too: the monitored val_loss chooses the epoch and stops training.
    # Streaming (cache_shards false), each worker reads its share of the files itself (deepgen.train.stream).
    datasets = {"train": split_dataset(spec.data_dir, "train", keep_normal),
                "val": split_dataset(spec.data_dir, "val", keep_normal)} if spec.train.cache_shards else None
    s = spec.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.with_absolute_paths().model_dump(mode="json"), "manifest": manifest.model_dump(mode="json"),
            "mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri,
            "train_rows": train_rows,
        },
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=RunConfig(
            name=spec.run_name, storage_path=spec.storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.train.checkpoints_to_keep,
                checkpoint_score_attribute=keep_best[0] if keep_best else None,
                checkpoint_score_order=keep_best[1] if keep_best else "max",
            ),
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
    )


def count_train_rows(spec: PipelineSpec, manifest: Manifest) -> int:
    """The training rows the model learns from: the manifest's count when every row is normal; else the
    normal ones, counted from the label column by a Ray task (where the data is: the driver reads none of
    it), which also refuses an anomaly spec that leaves no normal row."""
    a = spec.anomaly
    if a.normal_labels is None and a.anomalous_labels is None:
        return manifest.rows["train"]
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def count(data_dir, anomaly):
        check_normal_rows(data_dir, anomaly)
        return normal_row_count(data_dir, anomaly)

    try:
        return ray.get(count.remote(spec.data_dir, a))
    except ray.exceptions.RayTaskError as e:
        raise _user_error(e) from None


SMALL_SPLIT_BYTES = 64 << 20
FINAL_PREFIX = "deepgen-final-"  # train()'s local copy of the final checkpoint


def split_dataset(data_dir: Path, split: str, keep=None):
    """A Ray Dataset of one prepared split, `keep` (pyarrow batch -> rows to keep) applied.

    A split up to SMALL_SPLIT_BYTES of Parquet is read here and handed to Ray Data as Arrow: Ray Data's
    distributed read (file listing, footer and read tasks, each a worker process) cost 20-55 s per trainer
    start on 2 cores, longer than small runs train. Larger splits are read by Ray Data's tasks, in parallel
    and where the data is. Either way Ray Data shards the rows across the training workers.
    """
    import pyarrow.parquet as pq
    import ray.data

    path = split_path(data_dir, split)
    if split_bytes(data_dir, split) <= SMALL_SPLIT_BYTES:
        table = pq.read_table(path)
        return ray.data.from_arrow(keep(table) if keep else table)
    ds = ray.data.read_parquet(path)
    return ds.map_batches(keep, batch_format="pyarrow") if keep else ds


def train(spec: PipelineSpec, manifest: Manifest, mlflow_run_id: str | None, tracking_uri: str | None) -> Path:
    """Fit with Ray Train; returns a local folder holding the final checkpoint."""
    ensure_ray(spec)
    s = spec.scaling
    say(f"train: Ray Train run {spec.run_name} ({s.num_workers} workers, {spec.train.epochs} epochs) "
        f"in {spec.storage_path}")
    result = fit_trainer(spec, manifest, mlflow_run_id, tracking_uri)
    if result.checkpoint is None:
        raise TrainingError(f"{spec.run_name}: training produced no checkpoint")
    local = Path(tempfile.mkdtemp(prefix=FINAL_PREFIX))
    return Path(result.checkpoint.to_directory(str(local)))


def fit_trainer(spec: PipelineSpec, manifest: Manifest, mlflow_run_id: str | None, tracking_uri: str | None,
                callbacks: tuple = (), keep_best: tuple[str, str] | None = None):
    """Build the run's TorchTrainer (build_trainer) and fit it (fit): a plain run's training, and a tune
    trial's."""
    return fit(build_trainer(spec, manifest, mlflow_run_id, tracking_uri, callbacks, keep_best), spec)


def fit(trainer, spec: PipelineSpec):
    """trainer.fit(), with a worker's error as one line: a DeepgenError the workers recorded instead of
    raising (see deepgen.train.loop.train_loop_per_worker), or Ray's own."""
    from deepgen.train.loop import take_recorded_error

    take_recorded_error(spec)  # a stale one from an earlier attempt is not this run's
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; surface ours as one line
        raise _training_error(e) from None
    error = take_recorded_error(spec)
    if error is not None:
        raise error
    return result


def _training_error(e: Exception) -> Exception:
    text = str(e)
    for line in text.splitlines():
        if "TrainingError:" in line:
            return TrainingError(line.split("TrainingError:", 1)[1].strip())
    return TrainingError(f"training failed: {text.strip().splitlines()[-1] if text.strip() else type(e).__name__}")


# --- evaluate --------------------------------------------------------------------------------------


def evaluate(spec: PipelineSpec, manifest: Manifest, checkpoint_dir: Path) -> tuple[Evaluation, dict, Task]:
    """The family's own evaluation of the final checkpoint on the held-out splits."""
    from deepgen.train.loop import load_model_weights

    task = build_task(spec, manifest)
    models = load_model_weights(checkpoint_dir, task)
    ev = task.evaluate(models, spec.data_dir)
    ev.history = json.loads((checkpoint_dir / "history.json").read_text())
    if ev.history:  # which epoch's weights were evaluated: the best by train.monitor, or the last
        last = ev.history[-1]
        ev.registry_tags["kept_epoch"] = (spec.train.keep == "best" and last.get("best_epoch")) or last["epoch"]
    return ev, models, task


def score_champion_on(spec: PipelineSpec, version) -> dict[str, float] | None:
    """Test metrics of an existing version on *this* pipeline's test split, or None if it cannot run on it.

    A registry that does not answer, or a champion whose files no longer match their sha256, is raised, not
    read as "cannot run here": the gate would keep that champion without a word."""
    try:
        predictor = tracking.load_registered(version)
    except tracking.NotADeepgenModel:
        return None
    except RegistryError:
        raise
    except DeepgenError:  # a family or format this deepgen cannot load
        return None
    return predictor.evaluate(spec.data_dir, spec.anomaly)


# --- register --------------------------------------------------------------------------------------


ANOMALY_LABELS_TAG = "anomaly_labels"


def anomaly_labels(spec: PipelineSpec) -> str:
    """Which labels the test metrics counted as normal / anomalous: with the data fingerprint, what makes
    two versions' stored test metrics comparable."""
    a = spec.anomaly
    return json.dumps({"normal": a.normal_labels, "anomalous": a.anomalous_labels}, sort_keys=True)


def gate(spec: PipelineSpec, manifest: Manifest, metrics: dict[str, float]) -> tuple[bool, str, str | None]:
    """Does the new model beat the champion on the gate metric, on the same test data?

    A champion evaluated on another dataset, or with other anomaly labels, is scored again on this
    pipeline's test split, so the two numbers compared always come from the same rows and the same truth.
    Returns (promote, reason, champion version).
    """
    name, metric = spec.registry.model_name, spec.registry.gate_metric
    new = metrics.get(metric)
    if new is None:
        return False, f"the new model has no test metric {metric!r} (is the test split single-class?)", None
    current = tracking.champion(name)
    if not math.isfinite(new):  # NaN compares false both ways and inf beats everything: neither may win
        return False, f"the new model's {metric} is {new}, not a finite number", \
            None if current is None else str(current.version)
    if current is None:
        return True, "no champion yet", None
    same_rows = current.tags.get("data_fingerprint") == manifest.fingerprint
    same_truth = current.tags.get(ANOMALY_LABELS_TAG) == anomaly_labels(spec)  # which rows count as anomalies
    if same_rows and same_truth and f"test_{metric}" in current.tags:
        old = float(current.tags[f"test_{metric}"])
    else:
        rescored = score_champion_on(spec, current)
        if rescored is None or metric not in rescored:
            return False, f"champion v{current.version} cannot be scored on this test data; kept", str(current.version)
        old = rescored[metric]
    if not math.isfinite(old):  # a champion with a NaN (or an infinite) score is beaten by any finite one
        return True, f"{metric} {new:.4f} replaces champion v{current.version}'s non-finite {old}", str(current.version)
    better = new > old if spec.registry.greater_is_better else new < old
    verdict = "beats" if better else "does not beat"
    return better, f"{metric} {new:.4f} {verdict} champion v{current.version} ({old:.4f})", str(current.version)


def register(spec: PipelineSpec, manifest: Manifest, ev: Evaluation, models, task: Task,
             run_id: str) -> tracking.Registered:
    """The last step: log the model, register a version with its metrics and lineage, move an alias."""
    name = spec.registry.model_name
    promote, reason, previous = gate(spec, manifest, ev.metrics)
    tags = {
        **ev.registry_tags,
        **{f"test_{k}": v for k, v in ev.metrics.items()},
        "data_fingerprint": manifest.fingerprint,
        ANOMALY_LABELS_TAG: anomaly_labels(spec),
        "spec_hash": spec.spec_hash(),
        "git_commit": tracking.git_commit(),
        "ray_run_name": spec.run_name,
        "mlflow_run_id": run_id,
        tracking.RUN_NAME_TAG: spec.run_name,
        "pipeline": spec.name,
        "gate": reason,
    }
    if getattr(spec.model, "pretrained", None):  # fine-tuned: from which encoder (NAME-vVERSION or its folder)
        tags["pretrained"] = Path(spec.model.pretrained).name
    with tempfile.TemporaryDirectory(prefix="deepgen-export-") as tmp:
        model_dir = task.export(Path(tmp) / "model", models, ev)
        version = tracking.log_and_register(run_id, model_dir, name, tags)
    return settle_alias(spec, manifest, version, ev.metrics, (promote, reason, previous))


def settle_alias(spec: PipelineSpec, manifest: Manifest, version, metrics: dict[str, float],
                 verdict: tuple[bool, str, str | None] | None = None) -> tracking.Registered:
    """Point `champion` (through the gate) or `challenger` at a registered version.

    `verdict` is the gate's answer from before the upload; if the champion changed meanwhile (another run
    registered), the gate is asked again, so a slower run cannot replace a better model it never saw.
    MLflow has no compare-and-set on aliases, so two runs finishing in the same instant can still race.
    """
    name = spec.registry.model_name
    current = tracking.champion(name)
    if verdict is None or (str(current.version) if current else None) != verdict[2]:
        verdict = gate(spec, manifest, metrics)
        tracking.set_version_tag(name, str(version.version), "gate", verdict[1])
    promote, reason, previous = verdict
    if promote:  # through the one function that records champion moves
        tracking.move_champion(name, str(version.version), by="gate", reason=reason, action="gate")
    else:
        tracking.set_alias(name, tracking.CHALLENGER, version.version)
    # after the alias: a rerun of this run name now leaves the version's aliases to people (tracking.settled)
    tracking.set_version_tag(name, str(version.version), tracking.SETTLED_TAG,
                             tracking.CHAMPION if promote else tracking.CHALLENGER)
    return tracking.Registered(name, str(version.version), tracking.CHAMPION if promote else tracking.CHALLENGER,
                               previous, reason)


# --- the whole pipeline ----------------------------------------------------------------------------


@dataclass
class Summary:
    spec: PipelineSpec
    tracking_uri: str
    run_id: str
    registered: tracking.Registered
    evaluation: Evaluation | None
    reused: bool = False


def run_pipeline(spec: PipelineSpec, register_model: bool = True) -> Summary:
    with run_lock(spec):
        return _run_pipeline(spec, register_model)


def _run_pipeline(spec: PipelineSpec, register_model: bool) -> Summary:
    uri = tracking.configure(spec.runs_dir)
    manifest = prepare(spec)
    # Before start_run, which would mark the finished MLflow run RUNNING again and leave it so.
    existing = tracking.find_version_for_run(spec.registry.model_name, spec.run_name)
    if existing is not None:
        spec.refuse_other_spec(f"registered {existing.name} v{existing.version}", existing.tags.get("spec_hash"),
                               error=DeepgenError)
        return Summary(spec, uri, existing.run_id, reuse_registered(spec, manifest, existing), None, reused=True)
    run_id = start_run(spec, manifest)
    with tracking.finishing(run_id):
        checkpoint = train(spec, manifest, run_id, uri)
        try:
            say("evaluate: scoring validation and test splits")
            ev, models, task = evaluate(spec, manifest, checkpoint)
        finally:
            if checkpoint.name.startswith(FINAL_PREFIX):  # train's local copy; the run's own stay in storage
                shutil.rmtree(checkpoint, ignore_errors=True)
        log_evaluation(run_id, ev)
        reg = register(spec, manifest, ev, models, task, run_id) if register_model else None
    return Summary(spec, uri, run_id, reg, ev)


def reuse_registered(spec: PipelineSpec, manifest: Manifest, existing) -> tracking.Registered:
    """The version a run name registered before: its alias is moved only if it never was (the process
    stopped in between); a settled version is reported as it is, so a rerun never undoes a person's move."""
    how = tracking.settled(existing)
    if how is None:
        say(f"register: {spec.run_name} registered {existing.name} v{existing.version} but no alias moved; "
            "finishing that")
        metrics = {k.removeprefix("test_"): float(v) for k, v in existing.tags.items()
                   if k.startswith("test_") and _is_number(v)}
        return settle_alias(spec, manifest, existing, metrics)
    say(f"register: {spec.run_name} already registered {existing.name} v{existing.version}, already settled "
        f"as {how}; nothing to do")
    return tracking.Registered(existing.name, str(existing.version), ", ".join(existing.aliases or []) or "-",
                               None, existing.tags.get("gate", ""))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def start_run(spec: PipelineSpec, manifest: Manifest) -> str:
    return tracking.start_or_resume_run(
        spec.experiment, spec.run_name, spec.runs_dir / "mlartifacts",
        params=spec.model_dump(mode="json", exclude={"tracking"}),
        tags={"data_fingerprint": manifest.fingerprint, "spec_hash": spec.spec_hash(),
              "git_commit": tracking.git_commit(), "ray_run_name": spec.run_name},
        check_found=lambda tags: spec.refuse_other_spec(f"MLflow run {spec.run_name} was started",
                                                        tags.get("spec_hash"), error=DeepgenError),
    )


def log_evaluation(run_id: str, ev: Evaluation) -> None:

    tracking.log_metrics(run_id, ev.metrics, prefix="test_")
    numeric = {k: v for k, v in ev.registry_tags.items() if isinstance(v, (int, float))}
    tracking.log_metrics(run_id, numeric)
    # choices made from the data or the validation split, e.g. the loss `auto` resolved to, the kept epoch
    tracking.set_tags(run_id, {k: v for k, v in ev.registry_tags.items() if isinstance(v, (str, int))})
    for name, figure in ev.figures.items():
        tracking.log_figure(run_id, figure, name)
