"""The one interface every model family implements, so the training loop knows nothing family-specific.

A task builds its modules and optimizers from the spec, runs one training step on a batch, sums
evaluation metrics over a batch, and says which module is exported.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from deepgen.config import PipelineSpec
from deepgen.data.prepare import Manifest


class Task(Protocol):
    def build_models(self) -> dict[str, nn.Module]:
        """Named modules, freshly initialised (the loop moves, wraps and restores them)."""

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        ...

    def train_step(
        self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One update on a batch; returns detached per-batch means (e.g. {"loss": ...})."""

    def eval_step(self, models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-batch *sums* of evaluation metrics (the loop divides by the row count)."""


def build_task(spec: PipelineSpec, manifest: Manifest) -> Task:
    from deepgen.tasks.autoencoder import AutoencoderTask

    families = {"dense_autoencoder": AutoencoderTask, "conv_autoencoder": AutoencoderTask}
    return families[spec.model.kind](spec, manifest)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or torch.compile) wrapper."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or module._orig_mod
    return module
