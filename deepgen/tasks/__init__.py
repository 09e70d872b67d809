"""The one interface every model family implements, so the training loop and the pipeline know nothing
family-specific.

A task builds its modules and optimizers from the spec, runs one training step on a batch, sums
validation metrics over a batch, evaluates the trained model on the held-out splits, and exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from deepgen.config import PipelineSpec
from deepgen.data.prepare import Manifest

Batch = dict[str, torch.Tensor]  # column -> tensor; see Task.batch_columns


@dataclass
class Evaluation:
    """What a trained model achieved on the test split, and what the registry should record of it."""

    metrics: dict[str, float]  # test metrics; the gate reads one of them
    registry_tags: dict[str, Any] = field(default_factory=dict)  # e.g. the calibrated threshold
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure, logged to MLflow
    history: list[dict] = field(default_factory=list)  # per-epoch metrics from the final checkpoint


class Task(Protocol):
    # The columns of the prepared splits that batches carry, as tensors (list columns (B, D), scalar
    # columns (B,); floats float32, integers int64). The first column counts rows.
    batch_columns: tuple[str, ...] = ("features", "target")

    def build_models(self) -> dict[str, nn.Module]:
        """Named modules, freshly initialised (the loop moves, wraps and restores them)."""

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        ...

    def train_step(self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                   batch: Batch) -> dict[str, torch.Tensor]:
        """One update on a batch; returns detached per-batch means, at least {"loss": ...}."""

    def eval_step(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, torch.Tensor]:
        """Per-batch *sums* of validation metrics (the loop divides by the row count)."""

    def evaluate(self, models: dict[str, nn.Module], data_dir: Path) -> Evaluation:
        """Test metrics of trained modules (in eval mode, on the CPU) on a prepared dataset."""

    def export(self, dest: Path, models: dict[str, nn.Module], evaluation: Evaluation) -> Path:
        """Write the deployable model folder (see deepgen.export)."""

    # Optional, read by the loop where a task has them:
    #   monitor = (metric, "min" | "max")   the validation metric that picks the kept epoch and drives early
    #                                       stopping when train.monitor is not set; (None, _): the last epoch
    #   use_schedule(schedule)              the run's deepgen.train.optim.Schedule (warmup, decay,
    #                                       accumulation, clipping), sized to its batches per epoch
    #   end_epoch(models, optimizers)       after each epoch's last batch


def task_class(kind: str) -> type:
    """The task that trains a `model.kind`."""
    from deepgen.config import AUTOENCODER_KINDS, GAN_KINDS

    if kind in AUTOENCODER_KINDS:
        from deepgen.tasks.autoencoder import AutoencoderTask as cls
    elif kind == "unet":
        from deepgen.tasks.segmentation import SegmentationTask as cls
    elif kind == "bert_pretrain":
        from deepgen.tasks.bert import BertPretrainTask as cls
    elif kind == "bert_classifier":
        from deepgen.tasks.bert import BertClassifierTask as cls
    elif kind in GAN_KINDS:
        from deepgen.tasks.gan import GanTask as cls
    elif kind == "vit_classifier":
        from deepgen.tasks.vit import ViTClassifierTask as cls
    elif kind == "mae":
        from deepgen.tasks.vit import MAETask as cls
    else:
        raise ValueError(f"no task for model.kind {kind!r}")
    return cls


def build_task(spec: PipelineSpec, manifest: Manifest) -> Task:
    return task_class(spec.model.kind)(spec, manifest)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or torch.compile) wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module
