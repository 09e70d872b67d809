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


def build_task(spec: PipelineSpec, manifest: Manifest) -> Task:
    from deepgen.tasks.autoencoder import AutoencoderTask
    from deepgen.tasks.segmentation import SegmentationTask

    autoencoders = ("dense_autoencoder", "conv_autoencoder", "overcomplete_autoencoder", "sparse_autoencoder",
                    "denoising_autoencoder", "vae")
    families = {**dict.fromkeys(autoencoders, AutoencoderTask), "unet": SegmentationTask}
    return families[spec.model.kind](spec, manifest)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or torch.compile) wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module
