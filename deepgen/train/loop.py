"""The one training loop. It serves every model family through `deepgen.tasks.Task`.

Per epoch: train on the (sharded) train split, evaluate on val, then report metrics with a checkpoint
(models, optimizers, epoch, metric history, RNG). A restarted run resumes after the last reported epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepgen.config import PipelineSpec
from deepgen.data.manifest import Manifest, manifest_from_dict
from deepgen.errors import DeepgenError, TrainingError, as_report, from_report
from deepgen.tasks import Task, build_task, unwrap
from deepgen.train import accel
from deepgen.train.checkpoint import BEST_FILE, RANK_RNG_FILE, SPEC_HASH_FILE, STATE_FILE

ERROR_FILE = "deepgen-error.txt"  # in the run's storage folder: the error that stopped its workers


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config` holds the spec and manifest as JSON-able dicts.

    A DeepgenError (divergence, a collapsed discriminator, unusable data) would happen again on every
    restart, so it is not raised to Ray Train, whose failure policy retries any worker error up to
    `train.max_failures` times: rank 0 writes it to ERROR_FILE and every rank returns; the driver raises it
    (`take_recorded_error`). These errors are decided on values every rank shares (all-reduced losses,
    the same data), so all ranks stop at the same point.
    """
    from deepgen.train.env import RayTrainEnv

    spec = PipelineSpec.model_validate(config["spec"])
    manifest = manifest_from_dict(config["manifest"])
    env = RayTrainEnv(use_gpu=spec.scaling.use_gpu, seed=spec.train.seed, cache_shards=spec.train.cache_shards,
                      train_rows=config.get("train_rows"), data_dir=spec.data_dir, anomaly=spec.anomaly)
    on_epoch = None
    if env.world_rank == 0 and config.get("mlflow_run_id"):
        from deepgen import tracking

        on_epoch = tracking.EpochLogger(config["mlflow_run_id"], config["tracking_uri"])
    try:
        train_loop(spec, manifest, env, on_epoch=on_epoch)
    except DeepgenError as e:
        if env.world_rank == 0:
            fs, path = _error_location(spec)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(path) as f:
                f.write(as_report(e).encode())


def take_recorded_error(spec: PipelineSpec) -> DeepgenError | None:
    """The error the run's workers stopped on (removed, so a rerun starts clean), or None."""
    import pyarrow.fs

    fs, path = _error_location(spec)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        text = f.read().decode()
    fs.delete_file(path)
    return from_report(text)


def _error_location(spec: PipelineSpec):
    """(pyarrow filesystem, path) of the run's ERROR_FILE under `storage_path` (a folder or a URI)."""
    import pyarrow.fs

    if "://" in spec.storage_path:
        fs, root = pyarrow.fs.FileSystem.from_uri(spec.storage_path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), str(Path(spec.storage_path).absolute())
    return fs, f"{root.rstrip('/')}/{spec.run_name}/{ERROR_FILE}"


def train_loop(spec: PipelineSpec, manifest: Manifest, env, on_epoch=None) -> list[dict]:
    """Train `spec` in `env` (a `LocalEnv` or `RayTrainEnv`); returns the metric history."""
    task: Task = build_task(spec, manifest)
    t = spec.train
    task.share_losses(env.all_reduce, env.world_size)  # its failure checks see every rank's losses (ERROR_FILE)
    task.set_batches_per_epoch(train_batches(env.num_rows("train"), t.batch_size, env.world_size))
    seed_everything(t.seed + env.world_rank)
    # channels-last on CUDA, DDP under Ray Train with several workers, then torch.compile: once per worker
    models = {name: accel.compile_model(env.prepare_model(accel.memory_format(m, env.device),
                                                          task.ddp_options), t)
              for name, m in task.build_models().items()}
    optimizers = task.build_optimizers(models)
    start_epoch, history, best = 0, [], None
    with env.checkpoint_to_resume() as resume:
        if resume is not None:
            check_checkpoint_spec(resume, spec)
            start_epoch, history = load_checkpoint(resume, models, optimizers, rank=env.world_rank)
            best = load_best(resume)
            env.say(f"resuming {spec.run_name} after epoch {start_epoch}")
            if on_epoch is not None:  # epochs checkpointed but not logged when the last attempt died
                for h in history:
                    on_epoch({k: v for k, v in h.items() if k != "ended_at"})
    accel.fuse_optimizers(optimizers, env.device)  # after a resume: a checkpoint's groups carry its device's
    selector = EpochSelector.for_task(spec, task, history)

    autocast = autocast_context(spec, env.device)
    columns = batch_columns(task)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        if selector.stopped():  # a resumed run that had already stopped early
            break
        start = time.perf_counter()
        for m in models.values():
            m.train()
        sums: dict[str, torch.Tensor] = {}  # per-batch means times rows, and the task's own sums as they are
        summed = summed_keys(task)
        rows, steps = 0, 0
        for batch in env.batches("train", t.batch_size, epoch, columns):
            n = len(batch[columns[0]])
            if n == 1 and steps:  # a last batch of one row: batch norm cannot train on it (Ray Train gives
                continue  # every rank an equal shard, so all ranks skip it together); see train_batches
            with autocast:
                out = task.train_step(models, optimizers, batch)
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + (v.float() if k in summed else v.float() * n)
            rows += n
            steps += 1
        task.end_epoch(models, optimizers)  # e.g. the GAN guard's check of the epoch's last step
        env.sync_buffers(models)  # rank 0's batch norm statistics everywhere: what is validated and saved
        if env.device.type == "cuda":  # the epoch's time includes the work still queued on the GPU
            torch.cuda.synchronize(env.device)
        train_time = time.perf_counter() - start
        keys = sorted(sums)
        totals = env.all_reduce(torch.stack([*(torch.as_tensor(sums[k], device=env.device).float() for k in keys),
                                             torch.tensor(float(rows), device=env.device)]))
        train = means(task, dict(zip(keys, totals[:-1].tolist())), totals[-1].item())
        train_loss = train["loss"]
        if not math.isfinite(train_loss):
            raise TrainingError(f"{spec.run_name}: training diverged at epoch {epoch} (loss {train_loss}); "
                                "lower train.lr or check the input scaling")
        metrics = {
            "epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
            **evaluate(task, models, env, t.batch_size, autocast, columns),
            "rows_per_s": totals[-1].item() / max(train_time, 1e-9), "step_time_ms": 1e3 * train_time / max(steps, 1),
            "epoch_time_s": time.perf_counter() - start,
        }
        if "tokens" in sums:
            metrics["tokens_per_s"] = totals[keys.index("tokens")].item() / max(train_time, 1e-9)
        images, extra = {}, {}
        if env.world_rank == 0:  # e.g. a GAN's sample grid and Frechet distance
            extra, images = task.epoch_extras(models, epoch)
        if selector.monitor in task.periodic_metrics:  # rank 0's, shared: every rank keeps and stops alike
            m = selector.monitor
            shared = env.all_reduce(torch.tensor([1.0, float(extra[m])] if m in extra else [0.0, 0.0],
                                                 dtype=torch.float64, device=env.device))
            if shared[0] > 0:
                extra[m] = shared[1].item()
        metrics |= extra
        if selector.offer(epoch, metrics):
            best = {"epoch": epoch, "models": {k: cpu_state(m) for k, m in models.items()}}
        if selector.best_epoch is not None:  # none yet while a periodic monitor has not been measured
            metrics["best_epoch"] = selector.best_epoch
        history.append({**metrics, "ended_at": time.time()})  # wall clock, for start-up cost benchmarks
        with tempfile.TemporaryDirectory(prefix="deepgen-ckpt-") as tmp:
            if env.world_rank == 0:
                save_checkpoint(Path(tmp), models, optimizers, epoch, history, spec.spec_hash())
                if best is not None:
                    torch.save(best, Path(tmp) / BEST_FILE)
                task.checkpoint_files(Path(tmp))  # what makes a checkpoint usable on its own
            else:  # each rank's random state joins rank 0's files in the same checkpoint folder
                torch.save(rng_state(), Path(tmp) / RANK_RNG_FILE.format(rank=env.world_rank))
            env.report(metrics, Path(tmp))
        if env.world_rank == 0:
            if on_epoch is not None:
                on_epoch(metrics)
                if images and hasattr(on_epoch, "log_images"):
                    on_epoch.log_images(images, epoch)
            env.say(f"epoch {epoch}/{t.epochs} " + " ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
            if selector.stopped():
                env.say(f"early stopping: {selector.monitor} has not improved for {t.patience} epochs "
                        f"(best {selector.best_value:.4g} at epoch {selector.best_epoch})")
    return history


class EpochSelector:
    """Which epoch is the model: the best by `train.monitor` (a validation metric), or the last; and whether
    `train.patience` epochs without improvement have passed. Decided from the metric history alone, so a
    resumed run makes the same choices (every rank sees the same all-reduced metrics)."""

    def __init__(self, monitor: str | None, mode: str, patience: int | None, keep: str,
                 periodic: tuple[str, ...] = ()):
        self.monitor, self.mode, self.patience, self.periodic = monitor, mode, patience, periodic
        self.keep_best = keep == "best" and monitor is not None
        self.best_epoch: int | None = None
        self.best_value = math.nan
        self.last_epoch = 0

    @classmethod
    def for_task(cls, spec: PipelineSpec, task: Task, history: list[dict]) -> EpochSelector:
        t = spec.train
        monitor, mode = (t.monitor, t.monitor_mode) if t.monitor else task.monitor
        selector = cls(monitor, mode, t.patience if monitor else None, t.keep, task.periodic_metrics)
        for entry in history:
            selector.offer(entry["epoch"], entry)
        return selector

    def offer(self, epoch: int, metrics: dict) -> bool:
        """Record an epoch's metrics; True when its weights are the ones to keep."""
        self.last_epoch = epoch
        if self.monitor is None:
            return False
        if self.monitor not in metrics:
            if self.monitor in self.periodic:
                return False  # not measured this epoch
            raise TrainingError(f"train.monitor: {self.monitor!r} is not a metric of this model; it reports "
                                f"{', '.join(k for k in metrics if k.startswith('val_'))}")
        value = float(metrics[self.monitor])
        better = math.isfinite(value) and (self.best_epoch is None or
                                           (value < self.best_value if self.mode == "min" else value > self.best_value))
        if better:
            self.best_epoch, self.best_value = epoch, value
        return better and self.keep_best

    def stopped(self) -> bool:
        if not self.patience or self.best_epoch is None:
            return False
        return self.last_epoch - self.best_epoch >= self.patience


@torch.no_grad()
def evaluate(task: Task, models, env, batch_size: int, autocast, columns) -> dict[str, float]:
    for m in models.values():
        m.eval()
    sums: dict[str, torch.Tensor] = {}
    rows = 0
    for batch in env.batches("val", batch_size, 0, columns):
        with autocast:
            for k, v in task.eval_step(models, batch).items():
                sums[k] = sums.get(k, 0) + v.float()
        rows += len(batch[columns[0]])
    keys = sorted(sums)
    totals = env.all_reduce(torch.stack([*(sums[k] for k in keys), torch.tensor(float(rows), device=env.device)]))
    return {f"val_{k}": v for k, v in means(task, dict(zip(keys, totals[:-1].tolist())), totals[-1].item()).items()}


def means(task: Task, sums: dict[str, float], rows: float) -> dict[str, float]:
    """An epoch's metrics from its sums over every rank: per-row means, except a task's ratio metrics
    (e.g. BERT's MLM loss and accuracy: means over masked tokens, whatever the rows' lengths)."""
    ratios = task.ratio_metrics
    out = {k: v / max(rows, 1) for k, v in sums.items() if k not in summed_keys(task)}
    out.update({name: sums[num] / max(sums[den], 1) for name, (num, den) in ratios.items() if den in sums})
    return out


def summed_keys(task: Task) -> set[str]:
    """What a task's train_step returns as sums over its batch (counts, the parts of ratio metrics), not as
    means: the loop adds these up as they are and weights the others by the batch's rows."""
    return {"tokens", *(p for pair in task.ratio_metrics.values() for p in pair)}


def train_batches(rows: int, batch_size: int, workers: int) -> int:
    """The batches each worker trains on per epoch: Ray Train's equal shards (every worker gets
    rows // workers; one worker, all of them), less a last batch of one row, which the loop skips."""
    per_worker = rows // workers
    batches = math.ceil(per_worker / batch_size)
    return batches - 1 if batches > 1 and per_worker % batch_size == 1 else batches


def batch_columns(task: Task) -> tuple[str, ...]:
    """The columns a task's batches hold (the first one counts rows)."""
    return tuple(task.batch_columns)


def autocast_context(spec: PipelineSpec, device: torch.device):
    bf16 = spec.train.precision == "bf16" or (spec.train.precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- checkpoints -----------------------------------------------------------------------------------


def check_checkpoint_spec(directory: Path, spec: PipelineSpec) -> None:
    """Refuse to resume a checkpoint trained under another spec: the same run name with a changed model
    or data would otherwise go on from weights of another shape (an error) or, worse, of the same shape."""
    saved = Path(directory) / SPEC_HASH_FILE
    spec.refuse_other_spec("its checkpoints are", saved.read_text().strip() if saved.is_file() else None,
                           error=TrainingError)


def save_checkpoint(directory: Path, models, optimizers, epoch: int, history: list[dict],
                    spec_hash: str | None = None) -> None:
    state = {
        "models": {k: unwrap(m).state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "epoch": epoch,
        "rng": rng_state(),
    }
    torch.save(state, directory / STATE_FILE)
    (directory / "history.json").write_text(json.dumps(history))
    if spec_hash is not None:
        (directory / SPEC_HASH_FILE).write_text(spec_hash)


def load_checkpoint(directory: Path, models, optimizers, rank: int = 0) -> tuple[int, list[dict]]:
    """Weights, optimizer state and this rank's random state (rank 0's in STATE_FILE, the others' in
    RANK_RNG_FILE), so a resumed run draws the same noise, masks and dropout as an uninterrupted one."""
    # weights_only: a checkpoint is data, never code to unpickle.
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    for k, m in models.items():
        unwrap(m).load_state_dict(state["models"][k])
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    rank_file = Path(directory) / RANK_RNG_FILE.format(rank=rank)
    if rank == 0:
        set_rng_state(state["rng"])
    elif rank_file.is_file():  # absent if the run now has more workers than when it was saved
        set_rng_state(torch.load(rank_file, weights_only=True))
    history = json.loads((Path(directory) / "history.json").read_text())
    return int(state["epoch"]), history


def rng_state() -> dict:
    """This process's torch, CUDA, numpy and Python random states."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()[1]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"]["key"], np.uint32), state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU (the best epoch's, kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def load_best(directory: Path) -> dict | None:
    path = Path(directory) / BEST_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_model_weights(directory: Path, task: Task, which: str = "kept") -> dict[str, torch.nn.Module]:
    """Fresh modules of `task` with the weights of a checkpoint, in eval mode on the CPU: the kept epoch's
    (the best by train.monitor where the checkpoint holds one, else its own epoch's), or `which="last"`."""
    best = load_best(directory) if which == "kept" else None
    state = best or torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    # a task whose modules carry data-derived buffers builds them without reading the data: the weights hold them
    models = task.build_models_for_weights() if hasattr(task, "build_models_for_weights") else task.build_models()
    for k, m in models.items():
        m.load_state_dict(state["models"][k])
        m.eval()
    return models


def _numpy_rng_state() -> dict:
    _, key, pos, _, _ = np.random.get_state()
    return {"key": key.tolist(), "pos": int(pos)}
