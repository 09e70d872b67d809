"""Hyperparameter search with Ray Tune: one TorchTrainer per trial (the Ray Train V2 pattern).

Each trial is a Tune function that applies its sampled values to the pipeline spec (by dotted path),
builds the same TorchTrainer as `deepgen train`, and forwards every epoch's report to Tune through
`TuneReportCallback`, so ASHA can stop it early. Each trial logs to an MLflow child run of one parent run
per sweep. The best trial's best epoch (its checkpoint kept by score) is evaluated on the test split and
goes through the same registry gate as a plain run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepgen import orchestrate, tracking
from deepgen.config import PipelineSpec, TuneSpec, apply_override
from deepgen.data.manifest import Manifest
from deepgen.errors import TrainingError
from deepgen.locks import run_lock


def search_space(tune_spec: TuneSpec) -> dict[str, Any]:
    """Our domains -> Ray Tune's sampling objects, keyed by dotted spec path."""
    from ray import tune

    build = {
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "choice": lambda d: tune.choice(d.values),
        "randint": lambda d: tune.randint(d.low, d.high),
        "grid": lambda d: tune.grid_search(d.values),
    }
    return {path: build[d.type](d) for path, d in tune_spec.search_space.items()}


@dataclass(frozen=True)
class Sweep:
    """What every trial of a sweep shares, handed to the trial function by `tune.with_parameters` (Tune
    stores it once in the object store; each trial's config holds only its sampled values)."""

    name: str  # NAME-sweep-SPECHASH: the Tune experiment and the MLflow parent run
    base: PipelineSpec  # paths absolute, run name unset: each trial names its own
    manifest: Manifest
    tracking_uri: str
    parent_run_id: str

    @property
    def keep_best(self) -> tuple[str, str]:
        return self.base.tune.metric, self.base.tune.mode

    def trial_spec(self, values: dict[str, Any], trial_name: str) -> PipelineSpec:
        """The pipeline spec of one trial: the base with the sampled values set, and its own run name."""
        raw = self.base.model_dump(mode="json")
        for path, value in values.items():
            apply_override(raw, f"{path}={json.dumps(value)}", source="tune")
        return PipelineSpec.validate_dict(raw, source=f"tune trial {trial_name}").with_run_name(trial_name)


def run_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """The Tune function: one TorchTrainer (orchestrate.fit_trainer), reports forwarded to Tune, an MLflow
    child run."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = ray.tune.get_context().get_trial_id()
    values = {k: config[k] for k in sweep.base.tune.search_space}
    spec = sweep.trial_spec(values, f"{sweep.name}-{trial}")
    tracking.configure_uri(sweep.tracking_uri)
    run_id = tracking.start_or_resume_run(
        spec.experiment, spec.run_name, spec.runs_dir / "mlartifacts", params={"tune": values},
        tags={"mlflow.parentRunId": sweep.parent_run_id, "deepgen.trial": trial})
    with tracking.finishing(run_id):
        orchestrate.fit_trainer(spec, sweep.manifest, run_id, sweep.tracking_uri,
                                callbacks=(TuneReportCallback(),), keep_best=sweep.keep_best)


@dataclass
class SweepResult:
    best_trial: str
    best_values: dict[str, Any]
    best_metric: float
    trials: list[dict[str, Any]]  # one row per trial: name, values, status, epochs, metric, best
    registered: tracking.Registered
    evaluation: Any
    parent_run_id: str
    best_epoch: int


def run_sweep(spec: PipelineSpec) -> SweepResult:
    """Prepare, search, evaluate the best trial on test, register it through the gate."""
    if spec.tune is None:
        raise TrainingError(f"{spec.name}: the pipeline has no `tune` section")
    sweep = f"{spec.name}-sweep-{spec.spec_hash()}"
    with run_lock(spec, sweep):  # one driver per sweep: a second would fight over its state
        return _run_sweep(spec, sweep)


def _run_sweep(spec: PipelineSpec, sweep: str) -> SweepResult:
    from ray import tune

    t = spec.tune
    uri = tracking.configure(spec.runs_dir)
    manifest = orchestrate.prepare(spec)
    orchestrate.ensure_ray(spec)
    parent = tracking.start_or_resume_run(
        spec.experiment, sweep, spec.runs_dir / "mlartifacts",
        params=spec.model_dump(mode="json", exclude={"tracking"}),
        tags={"data_fingerprint": manifest.fingerprint, "spec_hash": spec.spec_hash(), "deepgen.sweep": "1"})
    with tracking.finishing(parent):  # FAILED if anything below raises, FINISHED at the end
        param_space = search_space(t)
        context = Sweep(sweep, spec.with_absolute_paths().with_run_name(None), manifest, uri, parent)
        # The trial function only waits on its TorchTrainer, which reserves the workers' CPUs itself.
        trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=context), {"CPU": 0.01})
        state = f"{spec.storage_path.rstrip('/')}/{sweep}"
        if tune.Tuner.can_restore(state):  # a driver that died mid-sweep: its trials go on, none starts over
            orchestrate.say(f"tune: resuming sweep {sweep} from {state}")
            # unfinished trials resume from their checkpoints (same trial ids, so the same child runs);
            # errored ones stay errored: their error (a diverged loss, a bad spec) would come again
            tuner = tune.Tuner.restore(state, trainable=trainable, param_space=param_space, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                    max_concurrent_trials=t.max_concurrent_trials,
                    scheduler=_scheduler(t, spec.train.epochs), search_alg=_search_alg(t),
                ),
                run_config=tune.RunConfig(name=sweep, storage_path=spec.storage_path, verbose=1),
            )
        orchestrate.say(f"tune: {t.num_samples} samples, {t.max_concurrent_trials} at a time, "
                        f"{t.metric} ({t.mode}), scheduler {'ASHA' if t.scheduler else 'none'}")
        grid = tuner.fit()
        trials = _trial_rows(grid, t, list(t.search_space))
        for row in trials:
            orchestrate.say(f"trial {row['trial']}: {row['status']} after {row['epochs']} epochs, "
                            f"{t.metric}={row['metric']}, {row['values']}")
        finished = [r for r in grid if r.error is None and r.metrics and t.metric in r.metrics]
        if not finished:
            raise TrainingError(f"{sweep}: all {len(trials)} trials failed; nothing registered "
                                f"(first error: {_first_error(grid)})")
        # scope="all": the trial whose best epoch is best, not the one whose last epoch is.
        best = grid.get_best_result(metric=t.metric, mode=t.mode, scope="all", filter_nan_and_inf=True)
        values = {k: best.config[k] for k in t.search_space}
        best_name = best.metrics["trial_id"]
        best_spec = context.trial_spec(values, f"{sweep}-{best_name}")
        epoch, best_value, path = _best_epoch(best.metrics_dataframe, t.metric, t.mode)
        orchestrate.say(f"tune: best trial {best_name} {values}: {t.metric}={best_value:.5g} at epoch {epoch}")
        existing = tracking.find_version_for_run(spec.registry.model_name, best_spec.run_name)
        if existing is not None:  # a rerun of a finished (restored) sweep registers nothing new
            registered = orchestrate.reuse_registered(best_spec, manifest, existing)
            return SweepResult(best_name, values, best_value, trials, registered, None, parent, epoch)
        with tempfile.TemporaryDirectory(prefix="deepgen-best-") as checkpoint:
            _copy_checkpoint(path, Path(checkpoint), spec.storage_path)
            ev, models, task = orchestrate.evaluate(best_spec, manifest, Path(checkpoint))
        orchestrate.log_evaluation(parent, ev)
        tracking.set_tags(parent, {"best_trial": best_name, "best_values": json.dumps(values),
                                   f"best_{t.metric}": best_value, "best_epoch": epoch})
        _log_search_plot(parent, trials, t)
        registered = orchestrate.register(best_spec, manifest, ev, models, task, parent)
    return SweepResult(best_name, values, best_value, trials, registered, ev, parent, epoch)


def _best_epoch(history, metric: str, mode: str) -> tuple[int, float, str]:
    """(epoch, metric, checkpoint path) of a trial's best reported epoch."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    rows = history.dropna(subset=[metric, CHECKPOINT_PATH_KEY])
    best = rows[metric].min() if mode == "min" else rows[metric].max()
    # of tied epochs the last: Ray keeps the later checkpoints of a tie when it prunes to checkpoints_to_keep
    row = rows[rows[metric] == best].iloc[-1]
    return int(row["epoch"]), float(row[metric]), str(row[CHECKPOINT_PATH_KEY])


def _scheduler(t: TuneSpec, epochs: int):
    from ray.tune.schedulers import ASHAScheduler

    if t.scheduler is None:
        return None
    # max_t = the spec's epochs, so the rungs (grace * factor^k) are placed within the run, not up to 100
    return ASHAScheduler(time_attr="training_iteration", grace_period=t.scheduler.grace_period,
                         reduction_factor=t.scheduler.reduction_factor, max_t=max(epochs, t.scheduler.grace_period))


def _search_alg(t: TuneSpec):
    if t.search_alg == "random":
        return None  # Tune's default: random search (and grid expansion)
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise TrainingError("tune.search_alg optuna needs Optuna: pip install optuna") from None
    return OptunaSearch(seed=t.seed)


def _trial_rows(grid, t: TuneSpec, paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for r in grid:
        metrics = r.metrics or {}
        history = r.metrics_dataframe
        seen = history[t.metric].dropna() if history is not None and t.metric in history else None
        best = None if seen is None or seen.empty else float(seen.min() if t.mode == "min" else seen.max())
        rows.append({
            "trial": metrics.get("trial_id") or (r.path.rstrip("/").split("/")[-1] if r.path else "?"),
            "values": {k: (r.config or {}).get(k) for k in paths},  # None: a restored trial that never reported
            "status": "error" if r.error else "done",
            "epochs": int(metrics.get("epoch", 0)),
            "metric": metrics.get(t.metric),  # at the last epoch
            "best": best,  # over all its epochs
            "error": str(r.error).strip().splitlines()[-1] if r.error else None,
        })
    return rows


def _first_error(grid) -> str:
    for r in grid:
        if r.error:
            text = str(r.error).strip().splitlines()
            hit = [line for line in text if "TrainingError" in line]
            return (hit or text or ["?"])[-1][:300]
    return "no metric reported"


def _copy_checkpoint(path: str, dest: Path, storage_path: str) -> None:
    """A trial's checkpoint to a local folder. Ray reports its path without the storage's scheme (an
    `s3://bucket/x` storage gives `bucket/x/...`), so the filesystem comes from the storage path."""
    import pyarrow.fs

    if "://" in path:
        fs, path = pyarrow.fs.FileSystem.from_uri(path)
    else:
        fs = _storage_filesystem(storage_path)
    pyarrow.fs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())


def _storage_filesystem(storage_path: str):
    import pyarrow.fs

    if "://" in storage_path and not storage_path.startswith("file://"):
        return pyarrow.fs.FileSystem.from_uri(storage_path)[0]
    return pyarrow.fs.LocalFileSystem()


def _log_search_plot(run_id: str, trials: list[dict], t: TuneSpec) -> None:
    from deepgen import plots

    done = [r for r in trials if r["metric"] is not None]
    if done:
        tracking.log_figure(run_id, plots.search_scatter(done, t.metric), "search")
