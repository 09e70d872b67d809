"""The one interface every model family implements, so the training loop and the pipeline know nothing
family-specific.

A task builds its modules and optimizers from the spec, runs one training step on a batch, sums
validation metrics over a batch, evaluates the trained model on the held-out splits, and exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # kept light: deepgen.config reads deepgen.tasks.registry
    import torch
    from torch import nn

    from deepgen.config import PipelineSpec
    from deepgen.data.manifest import Manifest

Batch = dict[str, "torch.Tensor"]  # column -> tensor; see Task.batch_columns


@dataclass
class Evaluation:
    """What a trained model achieved on the test split, and what the registry should record of it."""

    metrics: dict[str, float]  # test metrics; the gate reads one of them
    registry_tags: dict[str, Any] = field(default_factory=dict)  # e.g. the calibrated threshold
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure, logged to MLflow
    history: list[dict] = field(default_factory=list)  # per-epoch metrics from the final checkpoint


class Task:
    """What a family's task implements (the first six methods) and every hook the loop calls, each with the
    default a task that does not need it keeps. The loop calls nothing else of a task."""

    # The columns of the prepared splits that batches carry, as tensors (list columns (B, D), scalar
    # columns (B,); floats float32, integers int64). The first column counts rows.
    batch_columns: tuple[str, ...] = ("features", "target")
    # The validation metric that picks the kept epoch and drives early stopping when train.monitor is not
    # set; (None, _): the last epoch is the model.
    monitor: tuple[str | None, str] = ("val_loss", "min")
    # Metrics of epoch_extras (rank 0) that only some epochs report (a GAN's Frechet distance every
    # model.watch_every epochs): a monitor may name one; the epochs without it are not candidates.
    periodic_metrics: tuple[str, ...] = ()
    # Keyword arguments of DistributedDataParallel for this task's modules (None: its defaults).
    ddp_options: dict[str, Any] | None = None
    # name -> (numerator, denominator): metrics the loop reports as a ratio of two sums over every rank
    # (e.g. BERT's MLM accuracy over masked tokens) instead of a mean over rows; train_step returns both
    # parts as sums over its batch.
    ratio_metrics: dict[str, tuple[str, str]] = {}

    def build_models(self) -> dict[str, nn.Module]:
        """Named modules, freshly initialised (the loop moves, wraps and restores them)."""
        raise NotImplementedError

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                   batch: Batch) -> dict[str, torch.Tensor]:
        """One update on a batch; returns detached per-batch means, at least {"loss": ...}."""
        raise NotImplementedError

    def eval_step(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, torch.Tensor]:
        """Per-batch *sums* of validation metrics (the loop divides by the row count)."""
        raise NotImplementedError

    def evaluate(self, models: dict[str, nn.Module], data_dir: Path) -> Evaluation:
        """Test metrics of trained modules (in eval mode, on the CPU) on a prepared dataset."""
        raise NotImplementedError

    def export(self, dest: Path, models: dict[str, nn.Module], evaluation: Evaluation) -> Path:
        """Write the deployable model folder (see deepgen.export)."""
        raise NotImplementedError

    # -- hooks: the loop calls each of these; the defaults do nothing -- #

    def share_losses(self, all_reduce, world_size: int) -> None:
        """Before training: the sum over ranks (a function of a tensor) and the number of ranks, for checks
        that must see every rank's losses."""

    def set_batches_per_epoch(self, batches: int) -> None:
        """Before training: the batches each worker trains on per epoch (what sizes a learning-rate
        schedule; deepgen.train.optim.ScheduledTask builds its Schedule from it)."""

    def end_epoch(self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """After each epoch's last batch, before validation and the checkpoint."""

    def epoch_extras(self, models: dict[str, nn.Module], epoch: int) -> tuple[dict[str, float], dict[str, Any]]:
        """After validation, on rank 0: extra metrics of the epoch and images (name -> array) to log."""
        return {}, {}

    def checkpoint_files(self, directory: Path) -> None:
        """Files a checkpoint needs beside the weights to be usable on its own (written on rank 0)."""

    # -- once per prepared data set, before any worker starts (deepgen.orchestrate.prepare_data_aids) -- #

    def data_aid_missing(self, data_dir: Path) -> str | None:
        """What this task computes once per prepared data set and caches beside it (a GAN's judge), named
        for the progress line, when it is not cached yet; None: nothing to compute."""
        return None

    def make_data_aid(self, data_dir: Path, device: str) -> None:
        """Compute and cache it. The pipeline runs this as one Ray task with the trainer's CPUs (or a GPU
        where the workers have one) before the workers start, instead of on rank 0 while the others wait."""


def task_class(kind: str) -> type:
    """The task that trains a `model.kind` (deepgen.tasks.registry)."""
    from deepgen.tasks.registry import task_class

    return task_class(kind)


def build_task(spec: PipelineSpec, manifest: Manifest) -> Task:
    return task_class(spec.model.kind)(spec, manifest)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or torch.compile) wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module
